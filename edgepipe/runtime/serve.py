"""``python <bundle> serve``: the bundle's application on the transport in ``http/``.

POST /embed takes {"texts": [...]} or {"text": "..."} (embedding bundles); POST /generate takes
{"prompt": "...", "max_new_tokens": ..., ...} and answers like ``generate --json`` (text-generation
bundles); POST /classify takes /embed's body and answers {"results": [{"label", "score",
"scores"}]}; POST /rerank takes {"query", "documents"} and answers {"results": [{"index",
"score"}]}, best first; GET /health and GET /manifest describe the bundle; OpenAI's /v1/
endpoints answer as ``openai_api`` writes them. Each task's endpoints are a module of
``endpoints/``; this one puts the bundle's in one route table. Requests are bounded (body size and
shape, texts per request, timeouts, connections) and only loopback addresses are served: put a
reverse proxy in front to expose it further.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from . import integrity, openai_api
from .endpoints.embeddings import texts_from
from .endpoints.generation import generate_options
from .http.json_body import RequestError
from .http.routes import Request, Route, Routes
from .http.server import Server
from .tasks import Task

__all__ = ["RequestError", "ServeError", "run", "texts_from", "generate_options"]

EXIT_SERVE = 3
MAX_BODY_BYTES = 1 << 20
MAX_TEXTS = 64
MAX_CONNECTIONS = 128
REQUEST_TIMEOUT = 15.0
MODELS = "/v1/models"
# Every task's endpoints: a bundle answers its own, and the others with a 404 naming its own.
TASK_PATHS = (
    "/embed",
    "/generate",
    "/classify",
    "/rerank",
    "/v1/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
)


class ServeError(Exception):
    """The server cannot start: one line for the user, exit code EXIT_SERVE."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="answer /embed, /generate, /classify or /rerank, /health, /manifest and OpenAI's /v1/ API over HTTP",
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="TCP port; 0 picks a free one")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="largest request")
    p.add_argument("--max-texts", type=int, default=MAX_TEXTS, help="most texts per request")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: target's)")
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="tokens a generation holds, prompt and reply (default: the model's, capped by the "
        "target's RAM for the KV cache)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=REQUEST_TIMEOUT,
        help="seconds a client may stall mid-request, idle between requests or take to read an "
        f"answer (default {REQUEST_TIMEOUT:g})",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=MAX_CONNECTIONS,
        help=f"open connections served at once; more get 503 (default {MAX_CONNECTIONS})",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("EDGEPIPE_API_KEY") or None,
        help="answer only requests with 'Authorization: Bearer KEY' (default: $EDGEPIPE_API_KEY)",
    )


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error_document(path: str, status: HTTPStatus, message: str, param: str | None = None) -> object:
    """OpenAI's error shape under /v1/, {"error": message} elsewhere."""
    if path.startswith("/v1/") or path == "/v1":
        return openai_api.error_document(status, message, param)
    return {"error": message}


class Application:
    """The bundle's runtime, its task's endpoints and the describing ones, as one route table."""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.manifest = integrity.read_manifest(root)
        self.task = integrity.bundle_task(root)
        self.model = openai_api.model_document(self.manifest, int(time.time()))
        self.endpoints: Any
        if self.task == Task.GENERATION:
            from .endpoints.generation import GenerationEndpoints
            from .generator import Generator, OptionError

            try:
                generator = Generator.from_bundle(root, threads=args.threads, max_context=args.max_context)
            except OptionError as exc:
                raise ServeError(str(exc)) from None
            self.runtime: Any = generator
            self.endpoints = GenerationEndpoints(generator, self.model["id"])
        elif self.task == Task.EMBEDDING:
            from .embedder import Embedder
            from .endpoints.embeddings import EmbeddingEndpoints

            self.runtime = Embedder.from_bundle(root, threads=args.threads)
            self.endpoints = EmbeddingEndpoints(self.runtime, args.max_texts, self.model["id"])
        elif self.task in (Task.CLASSIFICATION, Task.RERANKING):
            from .endpoints.scores import ScoreEndpoints
            from .scorer import Scorer

            self.runtime = Scorer.from_bundle(root, threads=args.threads)
            self.endpoints = ScoreEndpoints(self.runtime, self.task, args.max_texts)
        else:
            raise ServeError(f"this bundle's task {self.task!r} has no server")

    def routes(self) -> Routes:
        own = self.endpoints.routes()
        table = {path: Route("POST", self._wrong_task(path)) for path in TASK_PATHS if path not in own}
        table.update(own)
        table["/health"] = Route("GET", self.health)
        table["/manifest"] = Route("GET", lambda request: self.manifest)
        table[MODELS] = Route("GET", lambda request: {"object": "list", "data": [self.model]})
        return Routes(table, {MODELS + "/": Route("GET", self.one_model)})

    def _wrong_task(self, path: str) -> Any:
        hint = self.endpoints.openai_paths if path.startswith("/v1/") else None
        message = f"this is {integrity.a_bundle(self.task)}: POST {hint or self.endpoints.native}, not {path}"

        def refuse(request: Request) -> None:
            raise RequestError(HTTPStatus.NOT_FOUND, message)

        return refuse

    def one_model(self, request: Request) -> dict[str, Any]:
        if request.tail != self.model["id"]:
            raise RequestError(HTTPStatus.NOT_FOUND, f"no model {request.tail!r}")
        return dict(self.model)

    def health(self, request: Request) -> dict[str, Any]:
        health = {
            "status": "ok",
            "name": self.manifest.get("name"),
            "task": self.task.manifest_name,
            "model_sha256": self.manifest.get("model", {}).get("sha256"),
            "max_length": self.runtime.config.max_length,
            "connections": request.connections,
        }
        if self.task == Task.GENERATION:
            health["chat"] = self.runtime.chat_off() or "on"
            health["max_context"] = self.runtime.max_context
        return health


def run(root: Path, args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; exit 0 then, EXIT_SERVE when it cannot start."""
    try:
        if not loopback(args.host):
            raise ServeError(
                f"--host {args.host} is not a loopback address; the bundle serves only "
                "127.0.0.1/::1 (put a reverse proxy in front to expose it)"
            )
        if args.max_body_bytes < 1 or args.max_texts < 1 or args.max_connections < 1:
            raise ServeError("--max-body-bytes, --max-texts and --max-connections must be at least 1")
        if not 0 < args.timeout < float("inf"):
            raise ServeError(f"--timeout must be a positive number of seconds (got {args.timeout})")
        app = Application(root, args)
        try:
            server = Server(
                (args.host, args.port),
                app.routes(),
                max_body_bytes=args.max_body_bytes,
                request_timeout=args.timeout,
                max_connections=args.max_connections,
                api_key=args.api_key,
                error_document=error_document,
            )
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
        print(f"serving {app.manifest.get('name')} on http://{shown}:{port}", file=sys.stderr)
        sys.stderr.flush()
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:  # a second signal must not interrupt the close with a traceback
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        # Requests in flight are answered before the process exits (a restart on a new version, as
        # `update` does, loses none); a client that stalls is cut at --timeout, as it would be anyway.
        unfinished = server.drain(args.timeout)
        server.server_close()
    if unfinished:
        print(f"stopped; {unfinished} request(s) unfinished after --timeout {args.timeout:g} s", file=sys.stderr)
        return 0
    print("stopped", file=sys.stderr)
    return 0
