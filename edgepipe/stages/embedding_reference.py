"""Reference: the fp32 PyTorch embeddings of the evaluation texts, and how faithful the export is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.embedder import Embedder, EmbeddingConfig
from . import digests
from .embedding_evaluate import cosine_stats
from .export import quiet


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
    reference = reference_embeddings(source_dir, texts, runtime.max_length)
    np.save(out / "reference.npy", reference)
    fp32 = Embedder(fp32_model, tokenizer, runtime).embed(texts)
    stats = cosine_stats(fp32, reference, texts)
    (out / "fp32_onnx.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    return {"outputs": digests(out), "fp32_onnx": stats}


def reference_embeddings(model_dir: Path, texts: list[str], max_length: int) -> np.ndarray:
    """fp32 PyTorch embeddings: sentence-transformers if the model is one, else mean pooling."""
    import torch

    with quiet(), torch.inference_mode():
        if (model_dir / "modules.json").is_file():
            from sentence_transformers import SentenceTransformer

            st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
            st.max_seq_length = max_length
            vectors = st.encode(texts, batch_size=1, normalize_embeddings=True)
            return np.asarray(vectors, dtype=np.float32)
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        rows = []
        for text in texts:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            rows.append(torch.nn.functional.normalize(pooled, dim=-1)[0].numpy())
        return np.stack(rows).astype(np.float32)
