"""edgepipe's laptop-avx2 and rpi5 builds vs optimum-onnx's avx2/arm64 presets vs fp32, one run.

Accuracy: cosine to the fp32 PyTorch model over edgepipe's evaluation set (each text alone).
Speed: batch 1, 128 tokens, 2 threads, all sessions timed in alternation (median ratio to fp32).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgepipe import sources
from edgepipe.runtime import timing
from edgepipe.runtime.embedder import Embedder, EmbeddingConfig
from edgepipe.runtime.encoder_bench import SAMPLE_TEXT
from edgepipe.stages.embedding_evaluate import cosine_stats
from edgepipe.stages.embedding_reference import reference_embeddings
from edgepipe.tasks.texts import builtin_texts

RUNS, WARMUP, THREADS = 40, 5, 2


def edgepipe_build(target: str, out: Path) -> tuple[Path, Path, dict]:
    work = out / f"work-{target}"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgepipe",
            "build",
            "--target",
            target,
            "--out",
            str(out),
            "--work-dir",
            str(work),
            "--json",
            "--bench-runs",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(proc.stdout)
    return Path(summary["bundle_dir"]) / "model" / "model.onnx", work / "export", summary


def optimum_preset(export_dir: Path, preset: str, out: Path) -> Path:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    config = getattr(AutoQuantizationConfig, preset)(is_static=False, per_channel=False)
    quantizer = ORTQuantizer.from_pretrained(export_dir, file_name="model.onnx")
    quantizer.quantize(save_dir=out / preset, quantization_config=config)
    return out / preset / "model_quantized.onnx"


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    texts = builtin_texts("embedding")
    with tempfile.TemporaryDirectory(prefix="edgepipe-qbench-") as tmp:
        out = Path(tmp)
        avx2_model, export_dir, _ = edgepipe_build("laptop-avx2", out)
        rpi5_model, _, _ = edgepipe_build("rpi5", out)
        shutil_copy_tokenizer(export_dir)
        models = {
            "fp32 ONNX": export_dir / "model.onnx",
            "edgepipe laptop-avx2": avx2_model,
            "edgepipe rpi5": rpi5_model,
            "optimum avx2 preset": optimum_preset(export_dir, "avx2", out),
            "optimum arm64 preset": optimum_preset(export_dir, "arm64", out),
        }
        runtime = EmbeddingConfig(max_length=256, output="sentence_embedding", pooling="model")
        tokenizer = export_dir / "tokenizer" / "tokenizer.json"
        reference = reference_embeddings(sources.packaged_default(), texts, 256)
        embedders = {
            name: Embedder(path, tokenizer, runtime, threads=THREADS, spin=False) for name, path in models.items()
        }
        scores = {name: cosine_stats(e.embed(texts), reference, texts) for name, e in embedders.items()}
        sample = embedders["fp32 ONNX"].tokenizer.encode(SAMPLE_TEXT).ids
        ids = np.resize(np.asarray(sample, dtype=np.int64), 128)[None, :]
        mask = np.ones_like(ids)
        calls = {n: (lambda e=e: e.session.run(None, e.feeds(ids, mask))) for n, e in embedders.items()}
        times = timing.interleaved(calls, RUNS, WARMUP)
        sizes = {name: path.stat().st_size / 1e6 for name, path in models.items()}
    fp32 = np.asarray(times["fp32 ONNX"])
    print(f"all-MiniLM-L6-v2, {len(texts)} texts; batch 1 x 128 tokens, {THREADS} threads, {RUNS} interleaved runs")
    print(f"host: {timing.host_info()}")
    print(f"{'model':<22} {'MB':>6} {'p50 ms':>8} {'speed vs fp32':>14} {'min cos':>8} {'p5 cos':>8} {'mean cos':>9}")
    for name in models:
        ratio = float(np.median(fp32 / np.asarray(times[name])))
        s = scores[name]
        print(
            f"{name:<22} {sizes[name]:6.1f} {np.median(times[name]):8.2f} {ratio:13.2f}x "
            f"{s['min']:8.4f} {s['p5']:8.4f} {s['mean']:9.4f}"
        )


def shutil_copy_tokenizer(export_dir: Path) -> None:
    """optimum's quantizer wants config.json beside the model; the export keeps the tokenizer only."""
    src = sources.packaged_default() / "config.json"
    (export_dir / "config.json").write_text(src.read_text())


if __name__ == "__main__":
    main()
