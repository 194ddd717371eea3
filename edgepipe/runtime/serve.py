"""``python <bundle> serve``: a small JSON API on the standard library's HTTP server.

POST /embed takes {"texts": [...]} or {"text": "..."} (embedding bundles); POST /generate takes
{"prompt": "...", "max_new_tokens": ..., ...} and answers like ``generate --json`` (text-generation
bundles); GET /health and GET /manifest describe the bundle. Requests are bounded (body size,
texts per request, socket timeout) and only loopback addresses are served: put a reverse proxy in
front to expose it further.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import integrity
from .integrity import EMBEDDING, TEXT_GENERATION

EXIT_SERVE = 3
MAX_BODY_BYTES = 1 << 20
MAX_TEXTS = 64
ROUTES = {"/embed": "POST", "/generate": "POST", "/health": "GET", "/manifest": "GET"}
# The fields of a /generate body and the types each may have (seed may also be null).
GENERATE_FIELDS: dict[str, tuple[type, ...]] = {
    "prompt": (str,),
    "max_new_tokens": (int,),
    "temperature": (int, float),
    "top_k": (int,),
    "top_p": (int, float),
    "seed": (int, type(None)),
    "stop": (list,),
    "chat": (bool,),
}


class ServeError(Exception):
    """The server cannot start: one line for the user, exit code EXIT_SERVE."""


class RequestError(Exception):
    """A request the API refuses, with the HTTP status to answer."""

    def __init__(self, status: HTTPStatus, message: str, body_unread: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.body_unread = body_unread


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="answer POST /embed or /generate, GET /health, GET /manifest over HTTP"
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="TCP port; 0 picks a free one")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="largest request")
    p.add_argument("--max-texts", type=int, default=MAX_TEXTS, help="most texts per request")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: target's)")


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def texts_from(payload: object, max_texts: int) -> list[str]:
    """The texts of an /embed request body, or RequestError saying what is wrong with it."""
    bad = HTTPStatus.BAD_REQUEST
    if not isinstance(payload, dict) or len(payload.keys() & {"text", "texts"}) != 1:
        raise RequestError(bad, 'body must be a JSON object with "texts": [...] or "text": "..."')
    if "text" in payload:
        texts = [payload["text"]]
    elif isinstance(payload["texts"], list):
        texts = payload["texts"]
    else:
        raise RequestError(bad, '"texts" must be a list of strings')
    if not texts:
        raise RequestError(bad, '"texts" is empty')
    if len(texts) > max_texts:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"{len(texts)} texts in one request; at most {max_texts}",
        )
    for number, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(bad, f"text {number} is {type(text).__name__}, not a string")
        if "\x00" in text:
            raise RequestError(bad, f"text {number} contains a NUL character")
    return texts


def generate_options(payload: object) -> dict[str, Any]:
    """The keyword arguments of Generator.generate for a /generate body, or RequestError."""
    bad = HTTPStatus.BAD_REQUEST
    if not isinstance(payload, dict) or not isinstance(payload.get("prompt"), str):
        raise RequestError(bad, 'body must be a JSON object with "prompt": "..."')
    unknown = sorted(payload.keys() - GENERATE_FIELDS.keys())
    if unknown:
        raise RequestError(
            bad, f"unknown field {unknown[0]!r}; known: {', '.join(GENERATE_FIELDS)}"
        )
    for key, value in payload.items():
        types = GENERATE_FIELDS[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise RequestError(bad, f'"{key}" must be {names}, not {type(value).__name__}')
    if "\x00" in payload["prompt"]:
        raise RequestError(bad, "the prompt contains a NUL character")
    return dict(payload)


class Handler(BaseHTTPRequestHandler):
    """One request: route, check, answer JSON; never a traceback to the client."""

    server: BundleServer
    server_version = "edgepipe-bundle"
    # Drops a client that stalls mid-request instead of holding a thread forever.
    timeout = 15

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
        path = self.path.split("?", 1)[0]
        try:
            allowed = ROUTES.get(path)
            if allowed is None:
                raise RequestError(HTTPStatus.NOT_FOUND, f"no such path: {path}")
            if method != allowed:
                raise RequestError(
                    HTTPStatus.METHOD_NOT_ALLOWED, f"{path} answers {allowed}, not {method}"
                )
            if path == "/embed":
                self._send(HTTPStatus.OK, self.server.embed(self._json_body()))
            elif path == "/generate":
                self._send(HTTPStatus.OK, self.server.generate(self._json_body()))
            elif path == "/health":
                self._send(HTTPStatus.OK, self.server.health())
            else:
                self._send(HTTPStatus.OK, self.server.manifest)
        except RequestError as exc:
            self._send(exc.status, {"error": str(exc)}, allow=ROUTES.get(path))
            if exc.body_unread:
                self._drain()
        except Exception as exc:  # a bug or a broken model: answer it, keep serving
            self.log_message("error: %s: %s", type(exc).__name__, exc)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    def _json_body(self) -> object:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(
                HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required", body_unread=True
            )
        limit = self.server.max_body_bytes
        if int(length) > limit:
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"body of {length} bytes; at most {limit}",
                body_unread=True,
            )
        body = self.rfile.read(int(length))
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"body is not UTF-8 JSON: {exc}") from None

    def _send(self, status: HTTPStatus, payload: object, allow: str | None = None) -> None:
        data = (json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == HTTPStatus.METHOD_NOT_ALLOWED and allow:
            self.send_header("Allow", allow)
        self.end_headers()
        self.wfile.write(data)

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

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


class BundleServer(ThreadingHTTPServer):
    """The HTTP server and the one Embedder or Generator its threads share."""

    daemon_threads = True

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.manifest = integrity.read_manifest(root)
        self.max_body_bytes = args.max_body_bytes
        self.max_texts = args.max_texts
        self.task = integrity.bundle_task(root)
        self.embedder: Any = None
        self.generator: Any = None
        # One generation at a time: each already uses every intra-op thread, and interleaving two
        # would only make both slower.
        self.generate_lock = threading.Lock()
        if self.task == TEXT_GENERATION:
            from .generator import Generator

            self.generator = Generator.from_bundle(root, threads=args.threads)
        elif self.task == EMBEDDING:
            from .embedder import Embedder

            # onnxruntime's run() is thread-safe: requests embed concurrently.
            self.embedder = Embedder.from_bundle(root, threads=args.threads)
        else:
            raise ServeError(f"this bundle's task {self.task!r} has no server")
        if ":" in args.host:
            self.address_family = socket.AF_INET6
        super().__init__((args.host, args.port), Handler)

    def _wrong_task(self, path: str, right: str) -> RequestError:
        return RequestError(
            HTTPStatus.NOT_FOUND,
            f"this is {integrity.a_bundle(self.task)}: POST {right}, not {path}",
        )

    def embed(self, payload: object) -> dict[str, Any]:
        if self.embedder is None:
            raise self._wrong_task("/embed", "/generate")
        texts = texts_from(payload, self.max_texts)
        vectors = self.embedder.embed(texts)
        return {
            "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
            "truncated": [self.embedder.token_count(t)[1] for t in texts],
        }

    def generate(self, payload: object) -> dict[str, Any]:
        if self.generator is None:
            raise self._wrong_task("/generate", "/embed")
        from .generator import GenerationError

        options = generate_options(payload)
        try:
            with self.generate_lock:
                result = self.generator.generate(options.pop("prompt"), **options)
        except GenerationError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc)) from None
        response: dict[str, Any] = result.to_json()
        return response

    def health(self) -> dict[str, Any]:
        runtime = self.generator or self.embedder
        return {
            "status": "ok",
            "name": self.manifest.get("name"),
            "task": self.task,
            "model_sha256": self.manifest.get("model", {}).get("sha256"),
            "max_length": runtime.config.max_length,
        }

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        sys.stderr.write(f"{client_address[0]} connection error: {type(exc).__name__}: {exc}\n")


def run(root: Path, args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; exit 0 then, EXIT_SERVE when it cannot start."""
    try:
        if not loopback(args.host):
            raise ServeError(
                f"--host {args.host} is not a loopback address; the bundle serves only "
                "127.0.0.1/::1 (put a reverse proxy in front to expose it)"
            )
        if args.max_body_bytes < 1 or args.max_texts < 1:
            raise ServeError("--max-body-bytes and --max-texts must be at least 1")
        try:
            server = BundleServer(root, args)
        except OSError as exc:
            raise ServeError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SERVE
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    host, port = str(server.server_address[0]), int(server.server_address[1])
    shown = f"[{host}]" if ":" in host else host
    try:  # the line tells a supervisor the port, so a SIGTERM may follow at once: inside the try
        print(f"serving {server.manifest.get('name')} on http://{shown}:{port}", file=sys.stderr)
        sys.stderr.flush()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:  # a second signal must not interrupt the close with a traceback
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        server.server_close()
    print("stopped", file=sys.stderr)
    return 0
