"""The SBOM's CycloneDX 1.6 ``modelCard`` for the model component: family, task, the datasets its card
names, and what the build measured (accuracy against fp32, speed labelled host or device).

cyclonedx-python-lib 11 has no model card class, so this is the schema's JSON, added to the document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .licence import front_matter

_IO = {
    "embedding": ("text", "embedding vector"),
    "text-generation": ("text", "text"),
    "text-classification": ("text", "label probabilities"),
    "reranking": ("text pair", "relevance score"),
}


def _metrics(measured: dict[str, Any], slice_: str, label: str) -> list[dict[str, str]]:
    return [
        {"type": f"{key} ({label})", "value": str(value), "slice": slice_}
        for key, value in measured.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "n"
    ]


def _speed(bench: dict[str, Any] | None, where: str) -> list[dict[str, str]]:
    """The first measured shape's latency or decode speed, labelled with where it was measured."""
    if not bench:
        return []
    found: list[dict[str, str]] = []
    threads = bench.get("threads")
    result = (bench.get("results") or [None])[0]
    if isinstance(result, dict) and isinstance(result.get("model"), dict) and "p50_ms" in result["model"]:
        shape = f"batch {result.get('batch_size')}, {result.get('seq_len')} tokens, {threads} threads"
        found.append({"type": f"latency p50 ms ({where})", "value": str(result["model"]["p50_ms"]), "slice": shape})
        if result.get("speedup_vs_fp32") is not None:
            found.append(
                {"type": f"speed-up vs fp32 ({where})", "value": str(result["speedup_vs_fp32"]), "slice": shape}
            )
    elif isinstance(result, dict) and "decode_tokens_per_s" in result:
        shape = f"context {result.get('context_len')}, {threads} threads"
        found.append(
            {"type": f"decode tokens/s ({where})", "value": str(result["decode_tokens_per_s"]), "slice": shape}
        )
    elif isinstance(bench.get("model"), dict) and "decode_tokens_per_s" in bench["model"]:
        shape = f"{bench.get('prompt_tokens')}-token prompt, {bench.get('new_tokens')} new tokens, {threads} threads"
        found.append(
            {"type": f"decode tokens/s ({where})", "value": str(bench["model"]["decode_tokens_per_s"]), "slice": shape}
        )
    return found


def model_card(manifest: dict[str, Any], source: Path) -> dict[str, Any]:
    """The modelCard object of the bundle's model."""
    front = front_matter(source)
    try:
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    task = str(manifest["task"])
    parameters: dict[str, Any] = {
        "task": task,
        "architectureFamily": str(manifest["model"]["source"].get("model_type") or "unknown"),
    }
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(architectures, list) and architectures:
        parameters["modelArchitecture"] = str(architectures[0])
    datasets = front.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    if isinstance(datasets, list) and datasets:
        parameters["datasets"] = [{"type": "dataset", "name": str(d)} for d in datasets]
    inputs, outputs = _IO.get(task, ("text", "text"))
    parameters["inputs"], parameters["outputs"] = [{"format": inputs}], [{"format": outputs}]
    accuracy = manifest.get("accuracy") or {}
    model = accuracy.get("model") or {}
    count = model.get("n")
    metrics = _metrics(model, f"{count} evaluation texts" if count else "evaluation texts", "vs fp32")
    host = manifest.get("bench")
    metrics += _speed(host, "measured on the build host, not the device")
    metrics += _speed(manifest.get("device_bench"), "measured on the device")
    card: dict[str, Any] = {"bom-ref": "model-card", "modelParameters": parameters}
    if metrics:
        card["quantitativeAnalysis"] = {"performanceMetrics": metrics}
    return card
