"""Bench: host-measured latency of the model beside the fp32 export, interleaved in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..runtime import bench
from ..runtime.embedder import Embedder, EmbeddingConfig, host_threads
from ..tasks import embedding
from . import digests


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=1, gt=0, description="Texts per inference.")
    seq_len: int = Field(default=128, gt=1, description="Tokens per text.")
    runs: int = Field(default=30, gt=0, description="Timed runs per model.")
    warmup: int = Field(default=5, ge=0, description="Untimed runs per model first.")
    threads: int = Field(gt=0, description="The target's intra-op threads.")
    host: dict[str, Any] = Field(
        description="The machine measured on: a new host is a new measurement."
    )


def sample_ids(embedder: Embedder, seq_len: int) -> np.ndarray:
    """``seq_len`` real token ids: the built-in texts, tokenized and repeated as needed."""
    ids: list[int] = []
    for text in embedding.builtin_texts():
        ids.extend(embedder.tokenizer.encode(text).ids)
        if len(ids) >= seq_len:
            break
    return np.resize(np.asarray(ids, dtype=np.int64), seq_len)


def run(
    config: BenchConfig,
    fp32_model: Path,
    model: Path,
    tokenizer: Path,
    runtime: EmbeddingConfig,
    out: Path,
) -> dict[str, Any]:
    """Time both models on the same ``batch x seq_len`` input; write ``out/bench.json``."""
    threads = host_threads(config.threads)
    embedders = {
        "model": Embedder(model, tokenizer, runtime, threads=threads),
        "fp32": Embedder(fp32_model, tokenizer, runtime, threads=threads),
    }
    seq_len = min(config.seq_len, runtime.max_length)
    ids = np.tile(sample_ids(embedders["model"], seq_len), (config.batch_size, 1))
    mask = np.ones_like(ids)
    calls = {
        name: (lambda e=e: e.session.run(None, e.feeds(ids, mask))) for name, e in embedders.items()
    }
    times = bench.interleaved(calls, config.runs, config.warmup)
    stats = {name: bench.summarize(ms) for name, ms in times.items()}
    result = {
        "measured_on": "build host (not the target device)",
        "host": config.host,
        "provider": embedders["model"].session.get_providers()[0],
        "threads": threads,
        "target_threads": config.threads,
        "batch_size": config.batch_size,
        "seq_len": seq_len,
        "model": stats["model"],
        "fp32": stats["fp32"],
        "speedup_vs_fp32": round(stats["fp32"]["p50_ms"] / stats["model"]["p50_ms"], 3),
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    return {"outputs": digests(out), **result}
