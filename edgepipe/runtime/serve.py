"""``python <bundle> serve``: a small JSON API on the standard library's HTTP server.

POST /embed takes {"texts": [...]} or {"text": "..."} (embedding bundles); POST /generate takes
{"prompt": "...", "max_new_tokens": ..., ...} and answers like ``generate --json`` (text-generation
bundles); POST /classify takes /embed's body and answers {"results": [{"label", "score",
"scores"}]}; POST /rerank takes {"query", "documents"} and answers {"results": [{"index",
"score"}]}, best first; GET /health and GET /manifest describe the bundle; the OpenAI-compatible
/v1/ endpoints are in ``openai_api``, the HTTP side in ``http_handler``. Requests are bounded
(body size and shape, texts per request, timeouts, connections) and only loopback addresses are
served: put a reverse proxy in front to expose it further.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import integrity, openai_api
from .http_handler import CHAT, COMPLETIONS, Handler
from .http_json import RequestError
from .scoring_commands import rerank_request
from .tasks import Task

__all__ = ["RequestError", "ServeError", "run", "texts_from", "generate_options"]

EXIT_SERVE = 3
# Each task's own endpoint.
ROUTES = {
    Task.EMBEDDING: "/embed",
    Task.GENERATION: "/generate",
    Task.CLASSIFICATION: "/classify",
    Task.RERANKING: "/rerank",
}
MAX_BODY_BYTES = 1 << 20
MAX_TEXTS = 64
MAX_CONNECTIONS = 128
REQUEST_TIMEOUT = 15.0
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
        raise RequestError(bad, f"unknown field {unknown[0]!r}; known: {', '.join(GENERATE_FIELDS)}")
    for key, value in payload.items():
        types = GENERATE_FIELDS[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise RequestError(bad, f'"{key}" must be {names}, not {type(value).__name__}')
    if "\x00" in payload["prompt"]:
        raise RequestError(bad, "the prompt contains a NUL character")
    return dict(payload)


class BundleServer(ThreadingHTTPServer):
    """The HTTP server and the one Embedder or Generator its threads share."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.manifest = integrity.read_manifest(root)
        self.max_body_bytes = args.max_body_bytes
        self.max_texts = args.max_texts
        self.request_timeout = float(args.timeout)
        self.max_connections = args.max_connections
        self.api_key = args.api_key
        self.connections = 0
        self.connections_lock = threading.Lock()
        self.task = integrity.bundle_task(root)
        self.model = openai_api.model_document(self.manifest, int(time.time()))
        self.embedder: Any = None
        self.generator: Any = None
        self.scorer: Any = None  # a classifier or reranker
        # One generation at a time: each already uses every intra-op thread, and interleaving two
        # would only make both slower.
        self.generate_lock = threading.Lock()
        # Embeddings run concurrently, but no more at once than there are cores: beyond that they
        # only queue for the CPU and the GIL, and the thread started for a /health queues with
        # them. test_serve_load on a 2-core host, 6 rounds each: /health's slowest 0.51-0.70 s
        # without this bound, 0.10-0.36 s with it.
        self.embed_slots = threading.BoundedSemaphore(os.cpu_count() or 2)
        if self.task == Task.GENERATION:
            from .generator import Generator, OptionError

            try:
                self.generator = Generator.from_bundle(root, threads=args.threads, max_context=args.max_context)
            except OptionError as exc:
                raise ServeError(str(exc)) from None
            from .assistant.structured import vocabulary_of

            # The grammar library's view of the tokenizer takes ~1 s to build: not on the first JSON request.
            threading.Thread(target=vocabulary_of, args=(self.generator,), daemon=True).start()
        elif self.task == Task.EMBEDDING:
            from .embedder import Embedder

            # onnxruntime's run() is thread-safe: requests embed concurrently.
            self.embedder = Embedder.from_bundle(root, threads=args.threads)
        elif self.task in ROUTES:
            from .scorer import Scorer

            self.scorer = Scorer.from_bundle(root, threads=args.threads)
        else:
            raise ServeError(f"this bundle's task {self.task!r} has no server")
        if ":" in args.host:
            self.address_family = socket.AF_INET6
        super().__init__((args.host, args.port), Handler)

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

    def _wrong_task(self, path: str, right: str | None = None) -> RequestError:
        return RequestError(
            HTTPStatus.NOT_FOUND,
            f"this is {integrity.a_bundle(self.task)}: POST {right or ROUTES[self.task]}, not {path}",
        )

    def classify(self, payload: object) -> dict[str, Any]:
        if self.task != Task.CLASSIFICATION:
            raise self._wrong_task("/classify")
        texts = texts_from(payload, self.max_texts)
        with self.embed_slots:
            return {"results": self.scorer.classify(texts)}

    def rerank(self, payload: object) -> dict[str, Any]:
        if self.task != Task.RERANKING:
            raise self._wrong_task("/rerank")
        query, documents = rerank_request(payload, self.max_texts)
        with self.embed_slots:
            return {"results": self.scorer.rerank(query, documents)}

    def embed(self, payload: object) -> dict[str, Any]:
        if self.embedder is None:
            raise self._wrong_task("/embed")
        texts = texts_from(payload, self.max_texts)
        with self.embed_slots:
            vectors = self.embedder.embed(texts)
            return {
                "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
                "truncated": [self.embedder.token_count(t)[1] for t in texts],
            }

    def openai_embeddings(self, payload: object) -> dict[str, Any]:
        if self.embedder is None:
            chat = "/v1/chat/completions or /v1/completions" if self.generator else None
            raise self._wrong_task("/v1/embeddings", chat)
        texts, encoding = openai_api.embedding_inputs(payload, self.max_texts)
        with self.embed_slots:
            vectors = self.embedder.embed(texts)
            tokens = sum(self.embedder.token_count(t)[0] for t in texts)
            return openai_api.embeddings_document(vectors, encoding, tokens, self.model["id"])

    def completion_request(self, payload: object, chat: bool) -> openai_api.Completion:
        if self.generator is None:
            embeddings = "/v1/embeddings" if self.embedder else None
            raise self._wrong_task(CHAT if chat else COMPLETIONS, embeddings)
        return openai_api.completion_request(payload, chat, self.model["id"], self.generator)

    def run_generation(
        self,
        request: openai_api.Completion,
        on_text: Callable[[str], None] | None = None,
        on_token: Callable[[int], None] | None = None,
    ) -> Any:
        from .generator import GenerationError

        constraint = None
        if request.answer is not None and request.answer.plan.grammar is not None:
            from .assistant.structured import vocabulary_of

            constraint = request.answer.plan.constraint(vocabulary_of(self.generator))
        try:
            with self.generate_lock:
                return self.generator.generate(
                    request.prompt, **request.options, on_text=on_text, on_token=on_token, constraint=constraint
                )
        except GenerationError as exc:
            raise RequestError(HTTPStatus.BAD_REQUEST, str(exc), param="messages") from None

    def generate(self, payload: object) -> dict[str, Any]:
        if self.generator is None:
            raise self._wrong_task("/generate")
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
        runtime = self.generator or self.embedder or self.scorer
        health = {
            "status": "ok",
            "name": self.manifest.get("name"),
            "task": self.task.manifest_name,
            "model_sha256": self.manifest.get("model", {}).get("sha256"),
            "max_length": runtime.config.max_length,
            "connections": self.connections,
        }
        if self.generator is not None:
            health["chat"] = self.generator.chat_off() or "on"
            health["max_context"] = self.generator.max_context
        return health

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
        if args.max_body_bytes < 1 or args.max_texts < 1 or args.max_connections < 1:
            raise ServeError("--max-body-bytes, --max-texts and --max-connections must be at least 1")
        if not 0 < args.timeout < float("inf"):
            raise ServeError(f"--timeout must be a positive number of seconds (got {args.timeout})")
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
