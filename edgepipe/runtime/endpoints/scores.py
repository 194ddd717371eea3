"""A classifier's POST /classify and a reranker's POST /rerank."""

from __future__ import annotations

import os
import threading
from typing import Any

from ..http.routes import Request, Route
from ..scoring_commands import rerank_request
from ..tasks import Task
from .embeddings import texts_from


class ScoreEndpoints:
    """One scorer's endpoint: /classify for a classifier, /rerank for a reranker."""

    openai_paths = None

    def __init__(self, scorer: Any, task: Task, max_texts: int) -> None:
        self.scorer, self.task, self.max_texts = scorer, task, max_texts
        self.native = "/classify" if task == Task.CLASSIFICATION else "/rerank"
        self.slots = threading.BoundedSemaphore(os.cpu_count() or 2)  # as EmbeddingEndpoints'

    def routes(self) -> dict[str, Route]:
        handler = self.classify if self.task == Task.CLASSIFICATION else self.rerank
        return {self.native: Route("POST", handler)}

    def classify(self, request: Request) -> dict[str, Any]:
        texts = texts_from(request.json(), self.max_texts)
        with self.slots:
            return {"results": self.scorer.classify(texts)}

    def rerank(self, request: Request) -> dict[str, Any]:
        query, documents = rerank_request(request.json(), self.max_texts)
        with self.slots:
            return {"results": self.scorer.rerank(query, documents)}
