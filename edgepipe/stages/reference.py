"""Reference: the fp32 PyTorch embeddings of the evaluation texts, and how faithful the export is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.embedder import Embedder, EmbeddingConfig
from ..tasks import embedding
from . import digests


class ReferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    texts_digest: str = Field(description="sha256 of the evaluation texts, for the cache key.")
    runtime: dict[str, Any] = Field(description="The runtime settings the export is run with.")


def run(
    source_dir: Path,
    fp32_model: Path,
    tokenizer: Path,
    runtime: EmbeddingConfig,
    texts: list[str],
    out: Path,
) -> dict[str, Any]:
    """Write ``out/reference.npy`` (PyTorch) and score the fp32 ONNX export against it."""
    reference = embedding.reference_embeddings(source_dir, texts, runtime.max_length)
    np.save(out / "reference.npy", reference)
    fp32 = Embedder(fp32_model, tokenizer, runtime).embed(texts)
    stats = embedding.cosine_stats(fp32, reference, texts)
    (out / "fp32_onnx.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    return {"outputs": digests(out), "fp32_onnx": stats}
