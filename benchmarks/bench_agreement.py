"""Does `edgepipe bench` tell the truth? Its p50 beside a plain onnxruntime loop's, same model/shape.

Builds the default model for this machine's kind of target (or takes EDGEPIPE_BENCH_BUNDLE), then
alternates, in separate processes: a minimal timing loop written from scratch against onnxruntime
(no edgepipe code), and `edgepipe bench --json`, same model, shape, threads and session settings.
Prints every p50 and the ratio of their medians (goal: within noise, about 1.00 +- 0.05).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

EDGEPIPE = [sys.executable, "-m", "edgepipe"]
BATCH, SEQ, RUNS, WARMUP, ROUNDS = 1, 128, 40, 10, 6
THREADS = min(2, os.cpu_count() or 1)

# Deliberately independent of edgepipe: its own ids, its own loop, numpy's percentile.
PLAIN_LOOP = """
import sys, time, numpy as np, onnxruntime as ort
path, threads, batch, seq, runs, warmup = sys.argv[1], *map(int, sys.argv[2:])
opts = ort.SessionOptions()
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
ids = np.random.default_rng(0).integers(1000, 2000, size=(batch, seq), dtype=np.int64)
inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
feeds = {i.name: inputs[i.name] for i in s.get_inputs()}
for _ in range(warmup):
    s.run(None, feeds)
ms = []
for _ in range(runs):
    t = time.perf_counter(); s.run(None, feeds); ms.append((time.perf_counter() - t) * 1000)
print(np.percentile(ms, 50))
"""


def bundle_dir(tmp: Path) -> Path:
    given = os.environ.get("EDGEPIPE_BENCH_BUNDLE")
    if given:
        return Path(given)
    target = "rpi5" if platform.machine().lower() in ("aarch64", "arm64") else "laptop-avx2"
    print(f"building the default model for {target} (set EDGEPIPE_BENCH_BUNDLE to skip)...")
    proc = subprocess.run(
        [*EDGEPIPE, "build", "--target", target, "--out", str(tmp), "--json", "--bench-runs", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(json.loads(proc.stdout)["bundle_dir"])


def plain_p50(model: Path) -> float:
    args = [str(model), str(THREADS), str(BATCH), str(SEQ), str(RUNS), str(WARMUP)]
    proc = subprocess.run([sys.executable, "-c", PLAIN_LOOP, *args], capture_output=True, text=True, check=True)
    return float(proc.stdout)


def edgepipe_p50(bundle: Path) -> float:
    proc = subprocess.run(
        [
            *EDGEPIPE,
            "bench",
            str(bundle),
            "--json",
            "--no-baseline",
            "--no-write",
            "--batch-sizes",
            str(BATCH),
            "--seq-lens",
            str(SEQ),
            "--runs",
            str(RUNS),
            "--warmup",
            str(WARMUP),
            "--threads",
            str(THREADS),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(json.loads(proc.stdout)["results"][0]["model"]["p50_ms"])


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="edgepipe-bench-") as tmp:
        bundle = bundle_dir(Path(tmp))
        plain, ours = [], []
        for _ in range(ROUNDS):
            plain.append(plain_p50(bundle / "model" / "model.onnx"))
            ours.append(edgepipe_p50(bundle))
    print(f"{bundle.name}: batch {BATCH} x {SEQ} tokens, {THREADS} threads, {RUNS} runs each")
    print(f"  plain onnxruntime loop p50 ms: {'  '.join(f'{x:7.3f}' for x in plain)}")
    print(f"  edgepipe bench p50 ms:         {'  '.join(f'{x:7.3f}' for x in ours)}")
    # Rounds alternate, so each pair shares the machine's load of its moment; a shared machine's
    # load swings between rounds, which the plain loop's own spread shows.
    pairs = [o / p for o, p in zip(ours, plain, strict=True)]
    spread = (max(plain) - min(plain)) / statistics.median(plain)
    print(f"  edgepipe/plain per round:      {'  '.join(f'{x:7.3f}' for x in pairs)}")
    print(
        f"edgepipe/plain: median of per-round ratios {statistics.median(pairs):.3f}, ratio of best "
        f"p50s {min(ours) / min(plain):.3f} (plain loop's own spread across rounds: {spread:.0%})"
    )


if __name__ == "__main__":
    main()
