"""An embedding bundle's endpoints: POST /embed and OpenAI's POST /v1/embeddings."""

from __future__ import annotations

import os
import threading
from http import HTTPStatus
from typing import Any

from .. import openai_api
from ..http.json_body import RequestError
from ..http.routes import Request, Route

NATIVE = "/embed"
OPENAI = "/v1/embeddings"


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


class EmbeddingEndpoints:
    """Embeds concurrently (onnxruntime's run() is thread-safe), at most one request per core."""

    native, openai_paths = NATIVE, OPENAI

    def __init__(self, embedder: Any, max_texts: int, model: str) -> None:
        self.embedder, self.max_texts, self.model = embedder, max_texts, model
        # Beyond one embedding per core they only queue for the CPU and the GIL, and the thread
        # started for a /health queues with them. test_serve_load on a 2-core host, 6 rounds each:
        # /health's slowest 0.51-0.70 s without this bound, 0.10-0.36 s with it.
        self.slots = threading.BoundedSemaphore(os.cpu_count() or 2)

    def routes(self) -> dict[str, Route]:
        return {NATIVE: Route("POST", self.embed), OPENAI: Route("POST", self.openai_embeddings)}

    def embed(self, request: Request) -> dict[str, Any]:
        texts = texts_from(request.json(), self.max_texts)
        with self.slots:
            vectors = self.embedder.embed(texts)
            return {
                "embeddings": [[round(float(x), 7) for x in v] for v in vectors],
                "truncated": [self.embedder.token_count(t)[1] for t in texts],
            }

    def openai_embeddings(self, request: Request) -> dict[str, Any]:
        texts, encoding = openai_api.embedding_inputs(request.json(), self.max_texts)
        with self.slots:
            vectors = self.embedder.embed(texts)
            tokens = sum(self.embedder.token_count(t)[0] for t in texts)
            return openai_api.embeddings_document(vectors, encoding, tokens, self.model)
