"""Sentence embeddings: the built-in evaluation texts and the PyTorch reference."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..stages.export import quiet


def builtin_texts() -> list[str]:
    text = resources.files("edgepipe").joinpath("data/eval_texts.txt").read_text(encoding="utf-8")
    return [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]


def builtin_calibration_texts() -> list[str]:
    """Texts for calibrating activation ranges: kept apart from the evaluation set on purpose."""
    text = (
        resources.files("edgepipe")
        .joinpath("data/calibration_texts.txt")
        .read_text(encoding="utf-8")
    )
    return [line for line in text.splitlines() if line.strip()]


def load_texts(path: Path) -> list[str]:
    """Texts from a file: one per line, or JSONL with a "text" field per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read evaluation texts: {exc}") from None
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
                texts.append(str(record["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(
                    f'{path}: line {number} is not a JSON object with a "text" field'
                ) from None
        else:
            texts.append(line)
    if not texts:
        raise ConfigError(f"{path}: no evaluation texts in the file")
    return texts


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


def cosine_stats(a: np.ndarray, b: np.ndarray, texts: list[str]) -> dict[str, object]:
    """min / p5 / mean cosine between matching rows, and the text where it is worst."""
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    cos = np.sum(na * nb, axis=1).astype(np.float64)
    worst = int(np.argmin(cos))
    return {
        "min": round(float(cos.min()), 6),
        "p5": round(float(np.percentile(cos, 5)), 6),
        "mean": round(float(cos.mean()), 6),
        "n": len(texts),
        "worst_text": texts[worst][:80],
    }
