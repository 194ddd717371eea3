"""A bundle's budgets as CI gates (``edgepipe check``) and two bundles side by side (``compare``).

The numbers come from the manifest: the newest device measurement (``device_bench``) where there is
one, else the build host's (``bench``), labelled as such; sizes and accuracy from the build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, VerifyError
from ..runtime.integrity import read_manifest
from ..runtime.tasks import Task

OK, BROKEN, UNMEASURED = "ok", "broken", "not measured"
# The latency budget is for batch 1 at this many tokens (config.Budgets.latency_ms).
BUDGET_SEQ_LEN = 128


def manifest_of(root: Path) -> dict[str, Any]:
    try:
        return read_manifest(root)
    except ValueError as exc:
        raise VerifyError(str(exc)) from None


def is_generation(manifest: dict[str, Any]) -> bool:
    return Task.parse(manifest.get("task") or Task.EMBEDDING.manifest_name) == Task.GENERATION


def measurement(manifest: dict[str, Any], where: str | None = None) -> tuple[dict | None, str]:
    """The measurement to judge (``where``: "device", "host" or None, the newest there is) and a
    label saying where it was taken."""
    device, host = manifest.get("device_bench"), manifest.get("bench")
    if device and where in (None, "device"):
        probe = device.get("probe") or {}
        cpu = probe.get("cpu") or (device.get("machine") or {}).get("cpu") or "?"
        return device, f"device ({cpu}, onnxruntime {device.get('onnxruntime')})"
    if host and where in (None, "host"):
        return host, "build host (not the device)"
    return None, "nothing measured"


def figures(doc: dict[str, Any] | None) -> dict[str, Any]:
    """Peak RSS, batch-1 latency (p50, p95) and decode tokens/s of any bench document edgepipe
    writes: edgepipe.bench/1 (embeddings), /2 (generation) or the build's decoder bench."""
    found: dict[str, Any] = {
        "peak_rss_mb": None,
        "p50_ms": None,
        "p95_ms": None,
        "p95_key": None,
        "shape": None,
        "decode_tokens_per_s": None,
    }
    if not doc:
        return found
    if "results" not in doc:  # the build's decoder bench: one prompt, host-measured
        model = doc.get("model") or {}
        found.update(peak_rss_mb=model.get("peak_rss_mb"))
        found.update(decode_tokens_per_s=model.get("decode_tokens_per_s"))
        return found
    found["peak_rss_mb"] = doc.get("peak_rss_mb")
    results = doc["results"]
    if doc.get("schema") == "edgepipe.bench/2":
        if results:  # the shortest context measured: a chat turn, not a full window
            first = min(results, key=lambda r: r["context_len"])
            found["decode_tokens_per_s"] = first["decode_tokens_per_s"]
            found["shape"] = f"context {first['context_len']}"
        return found
    ones = [r for r in results if r["batch_size"] == 1] or results
    if ones:
        r = min(ones, key=lambda r: (abs(r["seq_len"] - BUDGET_SEQ_LEN), -r["seq_len"]))
        stats = r["model"]
        key = "p95_ms" if "p95_ms" in stats else "p99_ms"  # older documents had no p95
        found.update(p50_ms=stats["p50_ms"], p95_ms=stats[key], p95_key=key[:3])
        found["shape"] = f"batch {r['batch_size']} x {r['seq_len']}"
    return found


def _row(budget: str, limit: Any, measured: Any, broken: bool | None, source: str) -> dict:
    status = UNMEASURED if broken is None else BROKEN if broken else OK
    shown = "-" if measured is None else measured
    return {"budget": budget, "limit": limit, "measured": shown, "source": source, "status": status}


def check(root: Path) -> dict[str, Any]:
    """Every budget of the bundle's target against its newest measurement."""
    manifest = manifest_of(root)
    target = manifest.get("target") or {}
    budgets = target.get("budgets") or {}
    generation = is_generation(manifest)
    doc, source = measurement(manifest)
    found = figures(doc)
    rows = []
    size_key = "generation_model_size_mb" if generation else "model_size_mb"
    size_limit = budgets.get(size_key)
    size_mb = round(manifest["model"]["size_bytes"] / 1e6, 2)
    if size_limit is not None:
        rows.append(
            _row("model size MB", f"<= {size_limit:g}", size_mb, size_mb > size_limit, "the bundle's model file")
        )
    rss, ram = found["peak_rss_mb"], budgets.get("ram_mb")
    if ram is not None:
        broken = None if rss is None else rss > ram
        both = ((doc or {}).get("models") or {}).get("fp32") is not None
        label = f"{source}, the fp32 baseline loaded too" if both else source
        rows.append(_row("peak RSS MB", f"<= {ram:g}", rss, broken, label))
    if generation:
        floor, speed = budgets.get("decode_tokens_per_s"), found["decode_tokens_per_s"]
        if floor is not None:
            broken = None if speed is None else speed < floor
            label = f"{source}, {found['shape']}" if found["shape"] else source
            rows.append(_row("decode tokens/s", f">= {floor:g}", speed, broken, label))
    else:
        latency, p95 = budgets.get("latency_ms"), found["p95_ms"]
        if latency is not None:
            broken = None if p95 is None else p95 > latency
            name = f"{found['p95_key'] or 'p95'} latency ms"
            label = f"{source}, {found['shape']}" if found["shape"] else source
            rows.append(_row(name, f"<= {latency:g}", p95, broken, label))
    selftest = (manifest.get("device_bench") or {}).get("selftest")
    if selftest and selftest.get("bar") is not None:
        rows.append(
            _row(
                f"device {selftest['metric']}",
                f">= {selftest['bar']:g}",
                _device_score(selftest["device"]),
                not selftest["passed"],
                "python BUNDLE selftest on the device",
            )
        )
    return {
        "bundle": str(root),
        "target": target.get("name"),
        "task": manifest.get("task"),
        "measured_on": source,
        "budgets": rows,
        "ok": all(r["status"] != BROKEN for r in rows),
        "broken": [r["budget"] for r in rows if r["status"] == BROKEN],
    }


def _device_score(device: dict[str, Any]) -> float | None:
    """The number a selftest's bar applies to: min cosine, agreement or worst-query Spearman."""
    return next((device[k] for k in ("min", "agreement", "min_spearman") if k in device), None)


def _accuracy(manifest: dict[str, Any]) -> tuple[str, float | None]:
    model = (manifest.get("accuracy") or {}).get("model") or {}
    if is_generation(manifest):
        return "next-token agreement", model.get("agreement")
    if manifest.get("task") == "text-classification":
        return "label agreement", model.get("agreement")
    if manifest.get("task") == "reranking":
        return "worst-query Spearman", model.get("min_spearman")
    return "min cosine", model.get("min")


def compare(
    old_root: Path,
    new_root: Path,
    max_accuracy_drop: float | None = None,
    max_slowdown: float | None = None,
) -> dict[str, Any]:
    """Accuracy, size and speed of NEW against OLD (same target and task); which limits broke."""
    old, new = manifest_of(old_root), manifest_of(new_root)
    names = [(m.get("target") or {}).get("name") for m in (old, new)]
    if names[0] != names[1] or is_generation(old) != is_generation(new):
        raise ConfigError(
            f"{old_root} and {new_root} are for different targets or tasks ({names[0]}, "
            f"{names[1]}); compare bundles of one model for one target"
        )
    metric, before = _accuracy(old)
    after = _accuracy(new)[1]
    rows = []
    drop = None if before is None or after is None else round(before - after, 6)
    broken = None if drop is None else max_accuracy_drop is not None and drop > max_accuracy_drop
    limit = f"drop <= {max_accuracy_drop:g}" if max_accuracy_drop is not None else "-"
    rows.append(_compare_row(metric, before, after, drop, limit, broken))
    size = [m["model"]["size_bytes"] for m in (old, new)]
    rows.append(
        _compare_row(
            "model size MB",
            round(size[0] / 1e6, 2),
            round(size[1] / 1e6, 2),
            round((size[1] - size[0]) / 1e6, 2),
            "-",
            False,
        )
    )
    # Like with like: the device's numbers when both have them, else the host's.
    where = "device" if old.get("device_bench") and new.get("device_bench") else "host"
    (o_doc, source), (n_doc, _) = measurement(old, where), measurement(new, where)
    o, n = figures(o_doc), figures(n_doc)
    key = "decode_tokens_per_s" if is_generation(old) else "p50_ms"
    slowdown = None
    if o[key] and n[key]:
        ratio = o[key] / n[key] if key == "decode_tokens_per_s" else n[key] / o[key]
        slowdown = round(ratio, 3)
    broken = None if slowdown is None else max_slowdown is not None and slowdown > max_slowdown
    limit = f"slowdown <= {max_slowdown:g}x" if max_slowdown is not None else "-"
    what = "decode tokens/s" if key == "decode_tokens_per_s" else "p50 latency ms"
    rows.append(_compare_row(f"{what} ({source})", o[key], n[key], slowdown, limit, broken))
    return {
        "old": str(old_root),
        "new": str(new_root),
        "target": names[0],
        "rows": rows,
        "ok": all(r["status"] != BROKEN for r in rows),
        "broken": [r["metric"] for r in rows if r["status"] == BROKEN],
    }


def _compare_row(metric: str, old: Any, new: Any, change: Any, limit: str, broken: bool | None) -> dict[str, Any]:
    status = UNMEASURED if broken is None else BROKEN if broken else OK
    return {"metric": metric, "old": old, "new": new, "change": change, "limit": limit, "status": status}
