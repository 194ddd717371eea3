"""``python <bundle> selftest``: the build's accuracy check, re-run on this machine.

An embedding bundle ships its evaluation texts and the fp32 PyTorch model's embeddings of them
(``selftest/``); here the bundle's own model embeds the texts again with this machine's onnxruntime
and kernels, and the worst-case cosine is held against the profile's bar, as the build did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import bench
from .integrity import EMBEDDING, bundle_task, read_manifest

SCHEMA = "edgepipe.selftest/1"
DIR = "selftest"


class SelftestError(Exception):
    """No selftest data in this bundle, or data that does not fit its model; one line."""


def run(root: Path) -> dict[str, Any]:
    """The SCHEMA document: this machine's accuracy beside the build's, and whether it passes."""
    from .embedder import Embedder

    task = bundle_task(root)
    if task != EMBEDDING:
        raise SelftestError(f"selftest checks embedding bundles so far, not {task} ones")
    data = root / DIR
    try:
        texts = json.loads((data / "texts.json").read_text(encoding="utf-8"))
        reference = np.load(data / "reference.npy", allow_pickle=False)
    except (OSError, ValueError):
        raise SelftestError(
            f"this bundle ships no readable {DIR}/ data (built before selftest): rebuild it"
        ) from None
    vectors = Embedder.from_bundle(root).embed(texts)
    if vectors.shape != reference.shape:
        raise SelftestError(
            f"{DIR}/reference.npy is {reference.shape}, the model gives {vectors.shape}"
        )
    cosines = np.sum(vectors * reference, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    )
    values = [float(c) for c in cosines]
    worst = int(np.argmin(cosines))
    device = {
        "min": round(min(values), 6),
        "p5": round(bench.percentile(values, 5), 6),
        "mean": round(sum(values) / len(values), 6),
        "n": len(values),
        "worst_text": texts[worst][:80],
    }
    accuracy = read_manifest(root).get("accuracy") or {}
    build = accuracy.get("model") or {}
    bar = accuracy.get("bar")
    return {
        "schema": SCHEMA,
        "task": task,
        "metric": accuracy.get("metric", "min_cosine"),
        "bar": bar,
        "device": device,
        "build": {k: build.get(k) for k in ("min", "p5", "mean", "n")},
        "passed": bar is None or min(values) >= bar,  # unrounded, as the build compares
        "machine": bench.host_info(),
        "onnxruntime": ort.__version__,
    }


def text(result: dict[str, Any]) -> str:
    d, b = result["device"], result["build"]
    verdict = "passes" if result["passed"] else "FAILS"
    return (
        f"min cosine to the fp32 model over {d['n']} texts on this machine: {d['min']} "
        f"(build: {b['min']}), p5 {d['p5']} (build: {b['p5']}), mean {d['mean']} "
        f"(build: {b['mean']})\n"
        f"bar {result['metric']} >= {result['bar']}: {verdict} (worst text: {d['worst_text']!r})"
    )
