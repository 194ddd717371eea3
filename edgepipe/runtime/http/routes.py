"""What the transport asks of the application: a route table, path -> (method, handler).

A handler takes the Request and answers a JSON document (sent with 200) or an EventStream; it
refuses with RequestError. The transport knows nothing of tasks, models or OpenAI's documents.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Request:
    """One request as a handler sees it: the path, the tail a prefix route matched, the body."""

    path: str
    tail: str
    read_json: Callable[[], object]  # the body, read (bounded) and parsed on the first call
    connections: int  # open connections, the one of this request included

    def json(self) -> object:
        return self.read_json()


@dataclass
class EventStream:
    """An answer sent as server-sent events: ``produce(send)`` calls ``send(document)`` per event.

    The 200 is sent with the first event, so a refusal raised before it is still a 4xx; after
    the last, the transport writes ``data: [DONE]``.
    """

    produce: Callable[[Callable[[object], None]], None]


Handler = Callable[[Request], Any]  # -> a JSON document or an EventStream


@dataclass(frozen=True)
class Route:
    method: str
    handler: Handler


class Routes:
    """Exact paths, and prefixes (``/v1/models/``) whose tail goes to the handler."""

    def __init__(self, exact: dict[str, Route], prefixes: dict[str, Route] | None = None) -> None:
        self.exact = exact
        self.prefixes = prefixes or {}

    def find(self, path: str) -> tuple[Route, str] | None:
        if path in self.exact:
            return self.exact[path], ""
        for prefix, route in self.prefixes.items():
            if path.startswith(prefix):
                return route, path[len(prefix) :]
        return None
