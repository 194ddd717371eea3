"""Sentence embeddings from an ONNX encoder: tokenize, run, pool, normalise."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

RUNTIME_CONFIG = "runtime.json"


@dataclass(frozen=True)
class EmbeddingConfig:
    """What the runtime needs to know about an exported encoder (stored as runtime.json)."""

    max_length: int
    output: str
    pooling: str  # "model": the graph pools and normalises; "mean": mean-pool here, then normalise
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)

    @classmethod
    def load(cls, path: Path) -> EmbeddingConfig:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbeddingConfig:
        values = {k: v for k, v in data.items() if k != "task"}  # older bundles lack "task"
        return cls(**{**values, "providers": tuple(data.get("providers", cls.providers))})

    def to_json(self) -> dict[str, Any]:
        return {
            "max_length": self.max_length,
            "output": self.output,
            "pooling": self.pooling,
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "providers": list(self.providers),
        }


def session_options(intra_op_threads: int, inter_op_threads: int, spin: bool = True) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    if not spin:
        # Idle intra-op threads busy-wait by default: with several sessions timed in alternation,
        # one session's spinning threads steal the cores the next one runs on.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    opts.log_severity_level = 3
    return opts


def open_session(
    model: Path,
    intra_op_threads: int,
    inter_op_threads: int,
    providers: Sequence[str],
    spin: bool = True,
) -> ort.InferenceSession:
    """A session with a bundle's settings, on the wanted providers this build has."""
    return ort.InferenceSession(
        str(model),
        sess_options=session_options(intra_op_threads, inter_op_threads, spin),
        providers=usable_providers(providers),
    )


def usable_providers(wanted: Sequence[str]) -> list[str]:
    """The wanted providers this onnxruntime build has, in order; the CPU provider at worst."""
    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available]
    return chosen or ["CPUExecutionProvider"]


def host_threads(wanted: int) -> int:
    """Threads to use here: the configured count, capped at this machine's cores (0 = ORT's pick)."""
    cores = os.cpu_count() or 1
    return min(wanted, cores) if wanted > 0 else 0


def encoder_feeds(
    input_names: Sequence[str], input_ids: np.ndarray, attention_mask: np.ndarray
) -> dict[str, np.ndarray]:
    """An encoder's session inputs for a batch of token ids (token_type_ids are zeros if asked)."""
    available = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": np.zeros_like(input_ids),
    }
    return {name: available[name] for name in input_names}


class Embedder:
    """Turns texts into L2-normalised sentence embeddings with one onnxruntime session."""

    def __init__(
        self,
        model_path: Path,
        tokenizer_path: Path,
        config: EmbeddingConfig,
        threads: int | None = None,
        spin: bool = True,
    ) -> None:
        self.config = config
        intra = host_threads(config.intra_op_threads) if threads is None else threads
        self.session = open_session(model_path, intra, config.inter_op_threads, config.providers, spin)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.tokenizer.enable_truncation(max_length=config.max_length)
        self.tokenizer.no_padding()

    @classmethod
    def from_bundle(cls, root: Path, threads: int | None = None) -> Embedder:
        config = EmbeddingConfig.load(root / RUNTIME_CONFIG)
        return cls(root / "model" / "model.onnx", root / "tokenizer" / "tokenizer.json", config, threads)

    def token_count(self, text: str) -> tuple[int, bool]:
        """Tokens the model sees for ``text`` and whether it was truncated to max_length."""
        encoding = self.tokenizer.encode(text)
        return len(encoding.ids), bool(encoding.overflowing)

    def feeds(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The session inputs for a batch of token ids (token_type_ids are zeros where asked for)."""
        return encoder_feeds(self.input_names, input_ids, attention_mask)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text; each text is encoded alone, so results never depend on batching."""
        rows = []
        for text in texts:
            ids = np.asarray([self.tokenizer.encode(text).ids], dtype=np.int64)
            mask = np.ones_like(ids)
            (out,) = self.session.run([self.config.output], self.feeds(ids, mask))
            rows.append(self._pool(np.asarray(out, dtype=np.float32), mask)[0])
        dim = rows[0].shape[-1] if rows else 0
        return np.stack(rows) if rows else np.zeros((0, dim), dtype=np.float32)

    def _pool(self, out: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.config.pooling == "mean":
            weights = mask[..., None].astype(np.float32)
            out = (out * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(out, axis=-1, keepdims=True)
        return out / np.clip(norms, 1e-12, None)
