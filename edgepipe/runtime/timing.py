"""Latency measurement shared by the build's bench stage and the bundle's ``bench`` command."""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping

FEATURES = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimddp",
    "i8mm",
    "sve",
)


def host_info() -> dict[str, object]:
    """CPU model and the ISA features that decide int8 speed, as this machine reports them."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "CPU part") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {
        "cpu": model,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "isa": [f for f in FEATURES if f in flags],
    }


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of a non-empty list."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(ms: list[float], batch_size: int = 1) -> dict[str, float | int]:
    """Latency statistics of non-empty timings (ms); throughput is items over total time."""
    mean = sum(ms) / len(ms)
    var = sum((x - mean) ** 2 for x in ms) / (len(ms) - 1) if len(ms) > 1 else 0.0
    return {
        "runs": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p90_ms": round(percentile(ms, 90), 3),
        "p95_ms": round(percentile(ms, 95), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(mean, 3),
        "stdev_ms": round(math.sqrt(var), 3),
        "items_per_s": round(batch_size * 1000 / mean, 2),
    }


def speedup(baseline: dict[str, float | int] | None, model: dict[str, float | int]) -> float | None:
    """How many times faster the model's p50 is than the baseline's; None without a baseline."""
    return round(baseline["p50_ms"] / model["p50_ms"], 3) if baseline else None


def interleaved(
    calls: Mapping[str, Callable[[], object]],
    runs: int,
    warmup: int,
    max_seconds: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, list[float]]:
    """Time each call ``runs`` times in alternation (so drift hits all alike); milliseconds.

    Past ``max_seconds`` (warm-up included) it stops early, after at least one timed run each;
    ``progress`` is called with the number of timed runs done after each round.
    """
    deadline = None if max_seconds is None else time.perf_counter() + max_seconds
    for _ in range(warmup):
        if deadline is not None and time.perf_counter() > deadline:
            break
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for done in range(1, runs + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1000)
        if progress is not None:
            progress(done)
        if deadline is not None and time.perf_counter() > deadline:
            break
    return times


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB; None where the OS does not say."""
    # Linux: VmHWM belongs to this program's memory map. getrusage's ru_maxrss survives exec, so a
    # process started by a big one (the build, after torch) would report its parent's peak.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1e3, 1)
    except (OSError, ValueError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    # macOS reports bytes (Linux, kilobytes).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1e6 if sys.platform == "darwin" else 1e3), 1)
