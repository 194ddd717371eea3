"""``python <bundle> selftest``: the build's accuracy check, re-run on this machine.

A bundle ships what its evaluation compared against (``selftest/``): an embedding bundle its
evaluation texts and the fp32 PyTorch model's embeddings of them, a text-generation bundle the
texts' token ids and the fp32 ONNX model's next token at each position, a classifier or reranker
its texts or (query, document) pairs and the fp32 PyTorch model's logits of them. Here the bundle's own model
runs them again with this machine's onnxruntime and kernels, held against the profile's bar.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import timing
from .integrity import bundle_task, read_manifest
from .tasks import Task

SCHEMA = "edgepipe.selftest/1"
DIR = "selftest"


class SelftestError(Exception):
    """No selftest data in this bundle, or data that does not fit its model; one line."""


def _embedding(root: Path, data: Path) -> tuple[dict[str, Any], float, tuple[str, ...]]:
    """Min/p5/mean cosine of this machine's embeddings to the fp32 PyTorch model's."""
    from .embedder import Embedder

    texts = json.loads((data / "texts.json").read_text(encoding="utf-8"))
    reference = np.load(data / "reference.npy", allow_pickle=False)
    vectors = Embedder.from_bundle(root).embed(texts)
    if vectors.shape != reference.shape:
        raise SelftestError(f"{DIR}/reference.npy is {reference.shape}, the model gives {vectors.shape}")
    cosines = np.sum(vectors * reference, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    )
    values = [float(c) for c in cosines]
    device = {
        "min": round(min(values), 6),
        "p5": round(timing.percentile(values, 5), 6),
        "mean": round(sum(values) / len(values), 6),
        "n": len(values),
        "worst_text": texts[int(np.argmin(cosines))][:80],
    }
    return device, min(values), ("min", "p5", "mean", "n")


def _generation(root: Path, data: Path) -> tuple[dict[str, Any], float, tuple[str, ...]]:
    """Top-1 next-token agreement of this machine's model with the build host's fp32 ONNX model.

    Only the fp32 argmax ships, so KL and perplexity, which need its whole distribution, are the
    build's alone."""
    from .generator import Generator

    ids = json.loads((data / "ids.json").read_text(encoding="utf-8"))
    expected = np.load(data / "next_tokens.npy", allow_pickle=False)
    generator = Generator.from_bundle(root)
    got = [generator.logits(text).argmax(-1) for text in ids]
    if sum(len(g) for g in got) != expected.size:
        raise SelftestError(f"{DIR}/next_tokens.npy has {expected.size} positions, not the texts'")
    per_text, start = [], 0
    for g in got:
        per_text.append(float(np.mean(g == expected[start : start + len(g)])))
        start += len(g)
    agreement = float(np.mean(np.concatenate(got) == expected))
    device = {
        "agreement": round(agreement, 6),
        "agreement_min_text": round(min(per_text), 6),
        "positions": int(expected.size),
        "n": len(ids),
    }
    return device, agreement, ("agreement", "agreement_min_text", "positions", "n")


def _scores(root: Path, data: Path) -> tuple[dict[str, Any], float, tuple[str, ...]]:
    """A classifier's label agreement with the fp32 PyTorch model (and the labels' mean KL), or
    a reranker's worst per-query Spearman correlation (and largest score error)."""
    from .scorer import Scorer, label_metrics, query_spearman

    shipped = json.loads((data / "items.json").read_text(encoding="utf-8"))
    items = [tuple(i) if isinstance(i, list) else i for i in shipped["items"]]
    queries = shipped["queries"]
    reference = np.load(data / "reference.npy", allow_pickle=False)
    got = Scorer.from_bundle(root).logits(items)
    if got.shape != reference.shape:
        raise SelftestError(f"{DIR}/reference.npy is {reference.shape}, the model gives {got.shape}")
    if queries is None:
        agree, kl, _ = label_metrics(reference, got)
        device = {"agreement": round(float(agree.mean()), 6), "mean_kl": round(float(kl.mean()), 6)}
        return {**device, "n": len(items)}, float(agree.mean()), ("agreement", "mean_kl", "n")
    per_query = query_spearman(reference, got, queries)
    device = {
        "min_spearman": round(min(per_query.values()), 6),
        "mean_spearman": round(float(np.mean(list(per_query.values()))), 6),
        "max_score_error": round(float(np.abs(reference - got).max()), 6),
        "queries": len(per_query),
        "n": len(items),
    }
    return device, min(per_query.values()), tuple(device)


def run(root: Path) -> dict[str, Any]:
    """The SCHEMA document: this machine's accuracy beside the build's, and whether it passes."""
    task = bundle_task(root)
    check = {
        Task.EMBEDDING: _embedding,
        Task.GENERATION: _generation,
        Task.CLASSIFICATION: _scores,
        Task.RERANKING: _scores,
    }.get(task)
    if check is None:
        raise SelftestError(f"selftest does not check {task} bundles")
    try:
        device, score, keys = check(root, root / DIR)
    except (OSError, ValueError):
        raise SelftestError(f"this bundle ships no readable {DIR}/ data (built before selftest): rebuild it") from None
    accuracy = read_manifest(root).get("accuracy") or {}
    build = accuracy.get("model") or {}
    bar = accuracy.get("bar")
    return {
        "schema": SCHEMA,
        "task": task.manifest_name,
        "metric": accuracy.get("metric"),
        "bar": bar,
        "device": device,
        "build": {k: build.get(k) for k in keys},
        "passed": bar is None or score >= bar,  # unrounded, as the build compares
        "machine": timing.host_info(),
        "onnxruntime": ort.__version__,
    }


def text(result: dict[str, Any]) -> str:
    d, b = result["device"], result["build"]
    verdict = "passes" if result["passed"] else "FAILS"
    task = Task.parse(result["task"])
    if task == Task.CLASSIFICATION:
        return (
            f"label agreement with the fp32 model over {d['n']} texts on this machine: "
            f"{d['agreement']} (build: {b['agreement']}), mean KL {d['mean_kl']} (build: "
            f"{b['mean_kl']})\nbar {result['metric']} >= {result['bar']}: {verdict}"
        )
    if task == Task.RERANKING:
        return (
            f"Spearman correlation with the fp32 model over {d['queries']} queries on this "
            f"machine: worst {d['min_spearman']} (build: {b['min_spearman']}), mean "
            f"{d['mean_spearman']} (build: {b['mean_spearman']}); largest score error "
            f"{d['max_score_error']} (build: {b['max_score_error']})\n"
            f"bar {result['metric']} >= {result['bar']}: {verdict}"
        )
    if task == Task.GENERATION:
        return (
            f"next-token agreement with the fp32 model over {d['positions']} positions of "
            f"{d['n']} texts on this machine: {d['agreement']} (build: {b['agreement']}), worst "
            f"text {d['agreement_min_text']} (build: {b['agreement_min_text']})\n"
            f"bar {result['metric']} >= {result['bar']}: {verdict}"
        )
    return (
        f"min cosine to the fp32 model over {d['n']} texts on this machine: {d['min']} "
        f"(build: {b['min']}), p5 {d['p5']} (build: {b['p5']}), mean {d['mean']} "
        f"(build: {b['mean']})\n"
        f"bar {result['metric']} >= {result['bar']}: {verdict} (worst text: {d['worst_text']!r})"
    )
