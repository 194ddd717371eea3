"""One connection's requests, read with bounds, routed by the server's table, answered as JSON.

HTTP/1.1 with keep-alive and pipelining; every request is logged once, with the reason of a
refusal; the standard library's own refusals (bad request line, oversized headers) are JSON too.
A client that stalls, idles or reads slower than the server's timeout is dropped.
"""

from __future__ import annotations

import email.message
import hmac
import json
import re
import socket
import sys
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from .json_body import BodyError, RequestError, loads
from .routes import EventStream, Request

if TYPE_CHECKING:
    from .server import Server

DECIMAL = re.compile(r"[0-9]{1,15}")


class ClientGone(Exception):
    """The client stopped reading (closed, reset, or slower than the timeout): drop it."""


def _printable(text: str) -> str:
    """``text`` for one log line: control characters escaped, at most 200 characters."""
    text = text[:200]
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


class Handler(BaseHTTPRequestHandler):
    """One connection: requests in turn (keep-alive, pipelined), each answered JSON, logged once."""

    server: Server
    server_version = "edgepipe-bundle"
    protocol_version = "HTTP/1.1"
    path = ""
    requestline = ""
    streaming = False  # the answer is a stream of events, its status already sent

    def setup(self) -> None:
        super().setup()
        # Drops a client that stalls mid-request, idles between requests or reads the answer too
        # slowly (sendall's deadline covers the whole answer) instead of holding a thread forever.
        self.connection.settimeout(self.server.request_timeout)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def _route(self, method: str) -> None:
        with self.server.request_in_flight():  # a stopping server answers it before it exits
            self._answer(method)

    def _answer(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self.path, self.streaming = path, False
        found = self.server.routes.find(path)
        try:
            self._authorize()
            if found is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such path: {path}")
            route, tail = found
            if method != route.method:
                raise RequestError(HTTPStatus.METHOD_NOT_ALLOWED, f"{path} answers {route.method}, not {method}")
            request = Request(path, tail, self._json_body, self.server.connections)
            answer = route.handler(request)
            if isinstance(answer, EventStream):
                self._stream(answer)
            else:
                self._send(HTTPStatus.OK, answer)
        except RequestError as exc:
            self._refuse(exc, allow=found[0].method if found else None)
        except ClientGone as exc:
            self.close_connection = True
            self._log(f"client gone: {exc}")
        except Exception as exc:  # a bug or a broken model: answer it, keep serving
            self._fail(exc)

    def _authorize(self) -> None:
        key = self.server.api_key
        if key is None:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8", "surrogateescape"), key.encode("utf-8")
        ):
            raise RequestError(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                body_unread=self.command == "POST",
            )

    def _stream(self, stream: EventStream) -> None:
        """Send the stream's events, the 200 with the first; end it with ``data: [DONE]``."""

        def send(document: object) -> None:
            if not self.streaming:
                self._start_events()
            self._event(document)

        stream.produce(send)
        if not self.streaming:
            self._start_events()
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")
        self._log("", HTTPStatus.OK)

    def _json_body(self) -> object:
        body = self._body()
        try:
            return loads(body)
        except BodyError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None

    def _body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            raise RequestError(
                HTTPStatus.LENGTH_REQUIRED,
                "Transfer-Encoding bodies (chunked) are not accepted; send a Content-Length",
                body_unread=True,
            )
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required", body_unread=True)
        if len(lengths) != 1 or not DECIMAL.fullmatch(lengths[0].strip()):
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                "Content-Length must be one decimal number",
                body_unread=True,
            )
        length, limit = int(lengths[0]), self.server.max_body_bytes
        if length > limit:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes; at most {limit}",
                body_unread=True,
            )
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            self.close_connection = True
            raise RequestError(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the body's {length} bytes (its Content-Length) did not arrive within "
                f"{self.server.request_timeout:g} s",
            ) from None
        if len(body) < length:
            self.close_connection = True
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"the body ended after {len(body)} of the {length} bytes its Content-Length says",
            )
        return body

    def _error(self, status: HTTPStatus, message: str, param: str | None = None) -> object:
        return self.server.error_document(self.path, status, message, param)

    def _refuse(self, exc: RequestError, allow: str | None = None) -> None:
        headers = {"Allow": allow} if exc.status == HTTPStatus.METHOD_NOT_ALLOWED and allow else {}
        if exc.status == HTTPStatus.UNAUTHORIZED:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.body_unread:
            self.close_connection = True
        try:
            self._send(exc.status, self._error(exc.status, str(exc), exc.param), headers, str(exc))
        except ClientGone as gone:
            self._log(f"{exc}; client gone: {gone}", exc.status)
            return
        if exc.body_unread:
            self._drain()

    def _fail(self, exc: Exception) -> None:
        message = f"{type(exc).__name__}: {exc}"
        self.close_connection = True
        if self.streaming:  # the 200 is sent: end the stream by closing the connection
            self._log(f"stream broken off: {message}", HTTPStatus.OK)
            return
        try:
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            self._send(status, self._error(status, message), reason=message)
        except ClientGone:
            self._log(f"{message}; client gone")

    def _send(
        self,
        status: HTTPStatus,
        payload: object,
        headers: dict[str, str] | None = None,
        reason: str = "",
    ) -> None:
        data = (json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            self.send_response_only(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        except OSError as exc:  # TimeoutError included: a client reading slower than the timeout
            self.close_connection = True
            raise ClientGone(f"{type(exc).__name__} writing the answer") from None
        self._log(reason, status)

    def _start_events(self) -> None:
        self.streaming = True
        self.chunked = self.request_version != "HTTP/1.0"
        try:
            self.send_response_only(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            if self.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.close_connection = True
            self.end_headers()
        except OSError as exc:
            self.close_connection = True
            raise ClientGone(f"{type(exc).__name__} writing the answer") from None

    def _event(self, document: object) -> None:
        self._write_chunk(f"data: {json.dumps(document, ensure_ascii=False)}\n\n".encode())

    def _write_chunk(self, data: bytes) -> None:
        try:
            if self.chunked:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            elif data:
                self.wfile.write(data)
        except OSError as exc:
            self.close_connection = True
            raise ClientGone(f"{type(exc).__name__} writing the stream") from None

    def _drain(self) -> None:
        """Read and drop a bounded part of an unread body, so the client sees the 413, not a reset."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(1.0)
            left = 8 * self.server.max_body_bytes
            while left > 0 and (chunk := self.connection.recv(65536)):
                left -= len(chunk)
        except OSError:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """What the standard library refuses before routing (bad request line, headers), as JSON."""
        status = HTTPStatus(code)
        if status == HTTPStatus.NOT_IMPLEMENTED:  # an unknown method: as for a known one
            status, message = HTTPStatus.METHOD_NOT_ALLOWED, f"method {self.command!r} not allowed"
        self.close_connection = True
        if not hasattr(self, "headers"):  # what _send needs of a parsed request
            self.headers = email.message.Message()
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        text = message or status.phrase
        try:
            self._send(status, self._error(status, text), reason=text)
        except ClientGone:
            self._log(f"{text}; client gone", status)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Each request is logged once by _log, with the reason of a refusal."""

    def _log(self, reason: str, status: int | None = None) -> None:
        line = _printable(self.requestline) or "-"
        shown = f" {int(status)}" if status is not None else ""
        self.log_message('"%s"%s%s', line, shown, f" {_printable(reason)}" if reason else "")

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")
