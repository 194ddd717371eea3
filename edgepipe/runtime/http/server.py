"""The HTTP server: threads per connection up to a limit (503 past it), a route table, an API key."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Any

from .handler import Handler
from .routes import Routes

# (path, status, message, param) -> the JSON body of a refusal.
ErrorDocument = Callable[[str, HTTPStatus, str, "str | None"], object]


def plain_error(path: str, status: HTTPStatus, message: str, param: str | None = None) -> object:
    return {"error": message}


class Server(ThreadingHTTPServer):
    """Serves ``routes`` on ``address``; every bound is the caller's (body size, timeout, connections)."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        routes: Routes,
        *,
        max_body_bytes: int,
        request_timeout: float,
        max_connections: int,
        api_key: str | None = None,
        error_document: ErrorDocument = plain_error,
    ) -> None:
        self.routes = routes
        self.error_document = error_document
        self.max_body_bytes = max_body_bytes
        self.request_timeout = float(request_timeout)
        self.max_connections = max_connections
        self.api_key = api_key
        self.connections = 0
        self.connections_lock = threading.Lock()
        self.in_flight = 0  # requests begun and not yet answered (drain() waits for them)
        self.idle = threading.Condition()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @contextlib.contextmanager
    def request_in_flight(self) -> Iterator[None]:
        """Count a request from its headers to the end of its answer."""
        with self.idle:
            self.in_flight += 1
        try:
            yield
        finally:
            with self.idle:
                self.in_flight -= 1
                self.idle.notify_all()

    def drain(self, timeout: float) -> int:
        """Wait until no request is in flight, at most ``timeout`` seconds; how many still are."""
        deadline = time.monotonic() + timeout
        with self.idle:
            while self.in_flight and deadline - time.monotonic() > 0:
                self.idle.wait(deadline - time.monotonic())
            return self.in_flight

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread for the connection, or answer 503 at once past --max-connections."""
        with self.connections_lock:
            full = self.connections >= self.max_connections
            if not full:
                self.connections += 1
        if not full:
            super().process_request(request, client_address)
            return
        message = f"{self.max_connections} connections open; at most {self.max_connections}"
        data = (json.dumps({"error": message}) + "\n").encode()
        head = (
            f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
        )
        try:
            request.settimeout(1.0)
            request.sendall(head.encode() + data)
        except OSError:
            pass
        self.shutdown_request(request)
        sys.stderr.write(f"{client_address[0]} 503 refused: {message}\n")

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.connections_lock:
                self.connections -= 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        sys.stderr.write(f"{client_address[0]} connection error: {type(exc).__name__}: {exc}\n")
