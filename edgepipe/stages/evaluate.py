"""Evaluate: the quantized model (run by the bundle's own runtime) against the fp32 PyTorch model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.embedder import Embedder, EmbeddingConfig
from ..tasks import embedding
from . import digests


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(default="min_cosine", description="What the bar applies to.")
    bar: float = Field(description="The profile's minimum; the build fails below it.")
    texts_digest: str = Field(description="sha256 of the evaluation texts, for the cache key.")
    runtime: dict[str, Any] = Field(description="The runtime settings the model is run with.")


def run(
    config: EvaluateConfig,
    source_dir: Path,
    fp32_model: Path,
    model: Path,
    tokenizer: Path,
    runtime: EmbeddingConfig,
    texts: list[str],
    out: Path,
) -> dict[str, Any]:
    """Score ``model`` and the fp32 export against PyTorch; write ``out/evaluation.json``."""
    reference = embedding.reference_embeddings(source_dir, texts, runtime.max_length)
    np.save(out / "reference.npy", reference)
    fp32 = Embedder(fp32_model, tokenizer, runtime).embed(texts)
    candidate = Embedder(model, tokenizer, runtime).embed(texts)
    result = {
        "metric": config.metric,
        "bar": config.bar,
        "against": "fp32 PyTorch model",
        "model": embedding.cosine_stats(candidate, reference, texts),
        "fp32_onnx": embedding.cosine_stats(fp32, reference, texts),
    }
    result["passed"] = bool(result["model"]["min"] >= config.bar)  # type: ignore[index]
    (out / "evaluation.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return {"outputs": digests(out), **result}
