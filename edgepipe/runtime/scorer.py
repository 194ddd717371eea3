"""Sequence-classification heads: a text's labels (softmax over id2label) or a cross-encoder's
relevance score of (query, document) pairs, from one onnxruntime session."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from .embedder import EmbeddingConfig, host_threads, open_session
from .integrity import RUNTIME_CONFIG

# A text, or a (query, document) pair for a cross-encoder.
Item = str | tuple[str, str]


@dataclass(frozen=True)
class ScoringConfig:
    """What the runtime needs to know about an exported classifier or reranker (runtime.json)."""

    max_length: int
    labels: tuple[str, ...]  # id2label in id order; a reranker's one output: ("score",)
    pairs: bool = False  # a cross-encoder: (query, document) pairs in, one relevance score out
    output: str = "logits"
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @classmethod
    def load(cls, path: Path) -> ScoringConfig:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScoringConfig:
        values = {k: v for k, v in data.items() if k != "task"}
        return cls(
            **{
                **values,
                "labels": tuple(values["labels"]),
                "providers": tuple(data.get("providers", cls.providers)),
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "labels": list(self.labels),
            "pairs": self.pairs,
            "output": self.output,
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "providers": list(self.providers),
        }

    def session_settings(self) -> EmbeddingConfig:
        """The settings the benchmark opens and feeds an encoder with (it reads no output)."""
        return EmbeddingConfig(
            max_length=self.max_length,
            output=self.output,
            pooling="none",
            intra_op_threads=self.intra_op_threads,
            inter_op_threads=self.inter_op_threads,
            providers=self.providers,
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (the labels' probabilities)."""
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def label_metrics(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per text, from two models' logits: whether the labels agree, KL(ref || got) of the
    labels' probabilities in nats, and the largest probability difference."""
    p, q = softmax(ref), softmax(got)
    kl = np.sum(p * (np.log(np.clip(p, 1e-300, None)) - np.log(np.clip(q, 1e-300, None))), axis=1)
    agree = np.argmax(p, axis=1) == np.argmax(q, axis=1)
    return agree, kl, np.abs(p - q).max(axis=1)


def _rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank (scipy.stats.rankdata's default)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation; with no spread on a side (every score tied), 1.0 when
    both sides have none, else 0.0."""
    ra, rb = _rankdata(a), _rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if ra.std() == rb.std() else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def query_spearman(ref: np.ndarray, got: np.ndarray, queries: Sequence[int]) -> dict[int, float]:
    """Per query number, Spearman's correlation of its documents' scores (logits' column 0)."""
    groups: dict[int, list[int]] = {}
    for index, query in enumerate(queries):
        groups.setdefault(query, []).append(index)
    return {q: spearman(ref[rows, 0], got[rows, 0]) for q, rows in groups.items()}


class Scorer:
    """Runs a sequence-classification model: ``logits`` of texts or pairs, one item at a time."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        config: ScoringConfig,
        threads: int | None = None,
    ) -> None:
        self.config = config
        intra = host_threads(config.intra_op_threads) if threads is None else threads
        self.session = open_session(model_path, intra, config.inter_op_threads, config.providers)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # longest_first, as transformers truncates a pair: the longer side loses tokens first.
        self.tokenizer.enable_truncation(max_length=config.max_length)
        self.tokenizer.no_padding()

    @classmethod
    def from_bundle(cls, root: Path, threads: int | None = None) -> Scorer:
        config = ScoringConfig.load(root / RUNTIME_CONFIG)
        return cls(root / "model" / "model.onnx", root / "tokenizer" / "tokenizer.json", config, threads)

    def encode(self, item: Item) -> Encoding:
        return self.tokenizer.encode(*item) if isinstance(item, tuple) else self.tokenizer.encode(item)

    def truncated(self, item: Item) -> bool:
        return bool(self.encode(item).overflowing)

    def logits(self, items: Sequence[Item]) -> np.ndarray:
        """One row of logits per item; each runs alone, so results never depend on batching."""
        rows = []
        for item in items:
            enc = self.encode(item)
            ids = np.asarray([enc.ids], dtype=np.int64)
            available = {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "token_type_ids": np.asarray([enc.type_ids], dtype=np.int64),
            }
            feeds = {name: available[name] for name in self.input_names}
            (out,) = self.session.run([self.config.output], feeds)
            rows.append(np.asarray(out, dtype=np.float32)[0])
        width = len(self.config.labels)
        return np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)

    def classify(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per text: the likeliest label, its probability, and every label's probability."""
        records = []
        for probs in softmax(self.logits(texts)):
            best = int(np.argmax(probs))
            records.append(
                {
                    "label": self.config.labels[best],
                    "score": round(float(probs[best]), 6),
                    "scores": {label: round(float(p), 6) for label, p in zip(self.config.labels, probs, strict=True)},
                }
            )
        return records

    def rerank(self, query: str, documents: Sequence[str]) -> list[dict[str, Any]]:
        """The documents' relevance scores (the model's raw logit), highest first, with their
        index in ``documents``; equal scores keep the documents' order."""
        scores = self.logits([(query, d) for d in documents])[:, 0]
        order = sorted(range(len(documents)), key=lambda i: -float(scores[i]))
        return [{"index": i, "score": round(float(scores[i]), 6)} for i in order]
