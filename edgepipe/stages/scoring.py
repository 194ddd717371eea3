"""Classifiers and rerankers: the fp32 PyTorch logits of the evaluation items (reference) and a
model's scores against them (evaluate): label agreement and probability KL for a classifier, each
query's rank correlation and the largest score error for a reranker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..runtime.scorer import Item, Scorer, ScoringConfig, label_metrics, query_spearman
from . import digests
from .embedding_sensitivity import SensitivityConfig, each_alone
from .export import quiet
from .quantize import CalibrationData


class ReferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    items_digest: str = Field(description="sha256 of the evaluation texts or pairs.")
    runtime: dict[str, Any] = Field(description="The runtime settings the export is run with.")


class EvaluateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(description="label_agreement or rank_correlation: what the bar applies to.")
    bar: float = Field(description="The profile's minimum; the build fails below it.")
    max_kl: float | None = Field(default=None, description="label_agreement: largest mean KL.")
    max_score_error: float | None = Field(
        default=None, description="rank_correlation: largest score difference from fp32."
    )
    items_digest: str = Field(description="sha256 of the evaluation texts or pairs.")
    runtime: dict[str, Any] = Field(description="The runtime settings the model is run with.")


def reference_logits(model_dir: Path, items: list[Item], max_length: int) -> np.ndarray:
    """fp32 PyTorch logits of each item (a text, or a (query, document) pair), one at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with quiet(), torch.inference_mode():
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), local_files_only=True).eval()
        rows = []
        for item in items:
            args = item if isinstance(item, tuple) else (item,)
            enc = tokenizer(*args, truncation=True, max_length=max_length, return_tensors="pt")
            rows.append(model(**enc).logits[0].float().numpy())
    return np.stack(rows).astype(np.float32)


def label_stats(ref: np.ndarray, got: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Share of texts given fp32's label, mean and largest KL(fp32 || model) of the labels'
    probabilities, the largest probability difference, and the text of largest KL."""
    agree, kl, error = label_metrics(ref, got)
    return {
        "agreement": round(float(agree.mean()), 6),
        "mean_kl": round(float(kl.mean()), 6),
        "max_kl": round(float(kl.max()), 6),
        "max_prob_error": round(float(error.max()), 6),
        "n": len(texts),
        "worst_text": texts[int(np.argmax(kl))][:80],
    }


def rank_stats(ref: np.ndarray, got: np.ndarray, pairs: list[tuple[str, str]], queries: list[int]) -> dict[str, Any]:
    """Per query, Spearman's correlation of its documents' scores with fp32's: the worst and
    the mean; the largest score difference; the worst query."""
    per_query = query_spearman(ref, got, queries)
    worst = min(per_query, key=lambda q: (per_query[q], q))
    return {
        "min_spearman": round(per_query[worst], 6),
        "mean_spearman": round(float(np.mean(list(per_query.values()))), 6),
        "max_score_error": round(float(np.abs(ref[:, 0] - got[:, 0]).max()), 6),
        "queries": len(per_query),
        "n": len(pairs),
        "worst_query": pairs[queries.index(worst)][0][:80],
    }


def stats(ref: np.ndarray, got: np.ndarray, items: list[Item], queries: list[int] | None) -> dict[str, Any]:
    """label_stats for texts, rank_stats for pairs (``queries``: each pair's query number)."""
    if queries is None:
        return label_stats(ref, got, [i for i in items if isinstance(i, str)])
    return rank_stats(ref, got, [i for i in items if isinstance(i, tuple)], queries)


def passes(config: EvaluateConfig, ref: np.ndarray, got: np.ndarray, queries: list[int] | None) -> bool:
    """Whether the unrounded scores meet the bar and the KL or score-error limit."""
    if queries is None:
        agree, kl, _ = label_metrics(ref, got)
        return bool(agree.mean() >= config.bar and (config.max_kl is None or kl.mean() <= config.max_kl))
    worst = min(query_spearman(ref, got, queries).values())
    error = float(np.abs(ref[:, 0] - got[:, 0]).max())
    limit = config.max_score_error
    return worst >= config.bar and (limit is None or error <= limit)


def run_reference(
    model_dir: Path,
    fp32_model: Path,
    tokenizer: Path,
    runtime: ScoringConfig,
    items: list[Item],
    queries: list[int] | None,
    out: Path,
) -> dict[str, Any]:
    """Write ``out/reference.npy`` (PyTorch's logits) and score the fp32 ONNX export against it."""
    reference = reference_logits(model_dir, items, runtime.max_length)
    np.save(out / "reference.npy", reference)
    fp32 = Scorer(fp32_model, tokenizer, runtime).logits(items)
    found = {
        **stats(reference, fp32, items, queries),
        "max_abs_logit_diff": round(float(np.abs(fp32 - reference).max()), 6),
    }
    (out / "fp32_onnx.json").write_text(json.dumps(found, indent=2, ensure_ascii=False))
    return {"outputs": digests(out), "fp32_onnx": found}


def run_evaluate(
    config: EvaluateConfig,
    reference: Path,
    model: Path,
    tokenizer: Path,
    runtime: ScoringConfig,
    items: list[Item],
    queries: list[int] | None,
    out: Path,
) -> dict[str, Any]:
    """Score ``model`` against the reference; write ``out/evaluation.json`` and its logits."""
    ref = np.load(reference)
    got = Scorer(model, tokenizer, runtime).logits(items)
    np.save(out / "logits.npy", got)
    result = {
        "metric": config.metric,
        "bar": config.bar,
        **({"max_kl": config.max_kl} if config.max_kl is not None else {}),
        **({"max_score_error": config.max_score_error} if config.max_score_error else {}),
        "against": "fp32 PyTorch model",
        "model": stats(ref, got, items, queries),
        "passed": bool(passes(config, ref, got, queries)),
    }
    (out / "evaluation.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    return {"outputs": digests(out), **result}


def head_nodes(model: Path) -> list[str]:
    """Names that keep the classification head float: its Gemm nodes with a constant weight (a
    pooler or dense layer, then the projection to the labels). quantize_dynamic first rewrites
    every Gemm to a MatMul named NAME_MatMul (onnxruntime's replace_gemm_with_matmul), then
    quantizes it even when asked for MatMul alone, so both names are given. Kept float, the head
    costs a few KB and spares the logits int8's error."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    gemms = [n.name for n in graph.node if n.op_type == "Gemm" and n.input[1] in weights]
    return [name for gemm in gemms for name in (gemm, f"{gemm}_MatMul")]


def _damage(ref: np.ndarray, got: np.ndarray, labels: bool) -> np.ndarray:
    """Per item, how far ``got`` is from fp32: a label's KL, a relevance score's difference."""
    return label_metrics(ref, got)[1] if labels else np.abs(ref[:, 0] - got[:, 0])


def worst_items(ref: np.ndarray, got: np.ndarray, labels: bool) -> list[int]:
    """Item indices, the farthest from fp32 first (what the sensitivity stage probes)."""
    return [int(i) for i in np.argsort(-_damage(ref, got, labels), kind="stable")]


def run_sensitivity(
    config: SensitivityConfig,
    fp32_model: Path,
    reference: Path,
    tokenizer: Path,
    runtime: ScoringConfig,
    items: list[Item],
    labels: bool,
    calibration: CalibrationData,
    out: Path,
) -> dict[str, Any]:
    """Write ``out/ranking.json``: every weight MatMul with the damage it does quantized alone
    (mean KL of the labels, or mean score error, over the probe items), the worst first."""
    probe_items = [items[i] for i in config.probe]
    ref = np.load(reference)[config.probe]
    ranking: list[dict[str, Any]] = []
    for node, single in each_alone(config.quantization, fp32_model, calibration):
        got = Scorer(single, tokenizer, runtime).logits(probe_items)
        damage = round(float(_damage(ref, got, labels).mean()), 9)
        ranking.append({"node": node, "damage": damage})
    ranking.sort(key=lambda r: (-r["damage"], r["node"]))
    (out / "ranking.json").write_text(json.dumps(ranking, indent=2))
    return {"outputs": digests(out), "nodes": len(ranking), "worst": ranking[:3]}
