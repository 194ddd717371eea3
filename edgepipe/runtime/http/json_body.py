"""Request bodies as JSON that an attacker cannot turn into a crash or an ambiguity.

``json.loads`` recurses once per nesting level (100,000 levels raise RecursionError), turns
``1e999`` into infinity, keeps the last of two equal keys, accepts ``NaN`` and lone surrogate
escapes (``"\\ud800"``, which no UTF-8 encoder takes). Each of those is a 400 here, decided before
or while parsing, with a one-line reason.
"""

from __future__ import annotations

import json
import math
import re
from http import HTTPStatus
from typing import Any

MAX_DEPTH = 64  # an OpenAI chat request nests ~5 levels; a JSON schema in it a few more
MAX_NUMBER_DIGITS = 40  # beyond a 128-bit integer: no option of this API needs more
# What the depth scan looks at: brackets, and the quotes and backslashes that say what is a string.
_TOKENS = re.compile(rb'[\[\]{}"\\]')
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


class RequestError(Exception):
    """A request the API refuses, with the HTTP status to answer and the field at fault."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        body_unread: bool = False,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body_unread = body_unread  # the connection cannot carry another request: close it
        self.param = param


class BodyError(ValueError):
    """A body that is not acceptable JSON; the message is one line."""


def _depth_check(body: bytes) -> None:
    """BodyError when brackets outside strings nest deeper than MAX_DEPTH; linear in the body."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return
    depth, in_string, escaped = 0, False, -1
    for match in _TOKENS.finditer(body):
        at = match.start()
        if at == escaped:
            continue
        char = body[at : at + 1]
        if in_string:
            if char == b"\\":
                escaped = at + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > MAX_DEPTH:
                raise BodyError(f"JSON nested deeper than {MAX_DEPTH} levels")
        elif char in (b"]", b"}"):
            depth -= 1


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BodyError(f"duplicate key {key[:40]!r} in a JSON object")
        result[key] = value
    return result


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise BodyError(f"a number with more than {MAX_NUMBER_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 2 * MAX_NUMBER_DIGITS:
        raise BodyError(f"a number written with more than {2 * MAX_NUMBER_DIGITS} characters")
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"the number {text[:24]} is out of range")
    return value


def _constant(name: str) -> None:
    raise BodyError(f"{name} is not JSON")


def _check_strings(value: object) -> None:
    """BodyError for a string or key holding half of a surrogate pair (bounded by MAX_DEPTH)."""
    if isinstance(value, str):
        if _LONE_SURROGATE.search(value):
            raise BodyError("a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff)")
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)


def loads(body: bytes) -> object:
    """The JSON document in ``body`` (UTF-8), or BodyError saying in one line what is wrong."""
    _depth_check(body)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(f"body is not UTF-8 JSON: {exc}") from None
    try:
        value = json.loads(
            text,
            object_pairs_hook=_object,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as exc:
        raise BodyError(f"body is not UTF-8 JSON: {exc}") from None
    except RecursionError:  # unreachable after the depth check; kept as the last line of defence
        raise BodyError(f"JSON nested deeper than {MAX_DEPTH} levels") from None
    _check_strings(value)
    return value
