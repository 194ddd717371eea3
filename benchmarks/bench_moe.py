"""Routed int4 experts vs llama.cpp Q4_0 vs the same model dense, on a random Granite-MoE-1B-A400M shape.

The model: ibm-granite/granite-3.0-1b-a400m-instruct's config (hidden 1024, 16 heads over 8 KV heads,
32 experts of 512, 8 a token, vocabulary 49155, tied table, Granite's multipliers) with random weights
and ``--layers`` of its 24 layers (default 8: the build of all 24 needs a ~5 GB fp32 export twice
over). Three runtimes decode the same prompt ids greedily, timed in alternation, ``--reps`` rounds:

- edgepipe int4: the product's ``edgepipe build --target laptop-vnni`` (x86-int4: QMoE experts, GPTQ
  per expert on routed calibration rows; MatMulNBits elsewhere, 8-bit table);
- edgepipe int4, dense: the export with ``routed_experts=False`` (every expert on every token as
  MatMuls) through the same rewrites, int4 with x86-int4's block, zero points, accuracy level and
  table, round-to-nearest (speed does not depend on the codes; GPTQ over the dense experts is long);
- llama.cpp Q4_0: convert_hf_to_gguf.py (it knows granitemoe) and llama_model_quantize.

    python benchmarks/bench_moe.py --llama-python /work/main/.llamacpp-venv/bin/python \\
        --llama-cpp .llamacpp-venv/src/llama_cpp_python-0.3.36/vendor/llama.cpp --work /tmp/moe
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench_llm  # beside this script
import context_sweep
import numpy as np

from edgepipe.runtime import timing

HERE = Path(__file__).resolve().parent
GRANITE_MOE = dict(
    vocab_size=49155, hidden_size=1024, intermediate_size=512, num_attention_heads=16, num_key_value_heads=8,
    num_local_experts=32, num_experts_per_tok=8, max_position_embeddings=4096, rope_theta=10000.0,
    rms_norm_eps=1e-6, embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625,
    logits_scaling=6.0, tie_word_embeddings=True,
)  # fmt: skip


def make_model(dest: Path, layers: int) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    sys.path.insert(0, str(HERE.parent))
    from tests.decoders import train_bpe

    if any(dest.glob("model*.safetensors")):
        return dest
    tokenizer = train_bpe("gpt2")
    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model(
        "granitemoe", num_hidden_layers=layers, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **GRANITE_MOE
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, bos_token_id=eos, do_sample=False)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def build_routed(hf: Path, work: Path) -> Path:
    """The product's build for laptop-vnni; its bundle directory."""
    bundle = work / "dist" / "granite-moe-shape-laptop-vnni"
    if not (bundle / "manifest.json").exists():
        cmd = [sys.executable, "-m", "edgepipe", "build", "--model", str(hf), "--target", "laptop-vnni",
               "--name", "granite-moe-shape", "--out", str(work / "dist"), "--no-bench", "--json"]  # fmt: skip
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        print("edgepipe build:", json.loads(done.stdout.strip().splitlines()[-1]).get("accuracy"))
    return bundle


def build_dense(hf: Path, work: Path) -> Path:
    from edgepipe.catalog.config import WeightOnly
    from edgepipe.graph import weight_only
    from edgepipe.stages import export

    out = work / "dense"
    if not (out / "model.onnx").exists():
        out.mkdir(parents=True, exist_ok=True)
        config = export.ExportConfig(
            task="text-generation-with-past", dedupe_tied=True, fuse_attention=True, routed_experts=False
        )
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            export.run(config, hf, Path(tmp))
            settings = WeightOnly(block_size=32, accuracy_level=4, symmetric=False, algorithm="rtn",
                                  embedding_bits=8, embedding_block_size=64)  # fmt: skip
            weight_only.quantize(settings, Path(tmp) / "model.onnx", out / "model.onnx", 4)
    return out / "model.onnx"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_llm.add_common_arguments(parser)
    parser.add_argument("--layers", type=int, default=8, help="of Granite-3.0-1B-A400M's 24")
    parser.add_argument(
        "--no-llama",
        action="store_true",
        help="leave llama.cpp out (Q4_0 is loaded without extra buffer types: with them this AMX host's "
        "llama-cpp-python 0.3.36 segfaulted decoding this shape's Q4_0, Q4_1 and Q8_0)",
    )
    parser.add_argument(
        "--routed-onnx", type=Path, help="time this routed int4 model.onnx instead of building the bundle"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="edgepipe-moebench-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        run(args, work)


def run(args: argparse.Namespace, work: Path) -> None:
    from tokenizers import Tokenizer

    from edgepipe.runtime.generator import Generator

    hf = make_model(work / "hf", args.layers)
    bundle = None if args.routed_onnx else build_routed(hf, work)
    dense = build_dense(hf, work)
    q4 = work / "Q4_0.gguf"
    if not args.no_llama:
        f32 = bench_llm.convert_gguf(hf, args.llama_cpp.resolve(), work / "f32.gguf")
        llama = context_sweep.Worker(args.llama_python, "llamacpp_worker.py")
        if not q4.exists():
            llama("quantize", src=str(f32), dst=str(q4), ftype="Q4_0")
        llama("load", name="Q4_0", path=str(q4), threads=args.threads, extra_bufts=False)
    if bundle is not None:
        routed = Generator.from_bundle(bundle, threads=args.threads)
        routed.eos = frozenset()
        model = bundle / "model" / "model.onnx"
    else:
        routed = bench_llm.edgepipe_generator(args.routed_onnx, hf, args.threads, args.spin)
        model = args.routed_onnx
    dense_gen = bench_llm.edgepipe_generator(dense, hf, args.threads, args.spin)
    ids = Tokenizer.from_file(str(hf / "tokenizer.json")).encode(bench_llm.PROMPT).ids
    n = args.new_tokens
    calls = {
        "edgepipe int4 (routed, QMoE)": lambda: bench_llm.generator_run(routed, ids, n),
        "edgepipe int4, dense experts": lambda: bench_llm.generator_run(dense_gen, ids, n),
    }
    if not args.no_llama:
        calls["llama.cpp Q4_0"] = lambda: llama("generate", name="Q4_0", ids=ids, n=n)
    for call in calls.values():
        call()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in calls}
    for _ in range(args.reps):
        for name, call in calls.items():
            results[name].append(call())
    if not args.no_llama:
        llama.close()
    sizes = {
        "edgepipe int4 (routed, QMoE)": sum(p.stat().st_size for p in model.parent.glob("model.onnx*")),
        "edgepipe int4, dense experts": sum(p.stat().st_size for p in dense.parent.glob("model.onnx*")),
    }
    if not args.no_llama:
        sizes["llama.cpp Q4_0"] = q4.stat().st_size
    experts: dict[str, Any] = {}
    if bundle is not None:
        experts = json.loads((bundle / "manifest.json").read_text())["stages"]["export"].get("experts", {})
    print(
        f"random Granite-MoE-1B-A400M shape, {args.layers} layers; prompt {len(ids)} tokens, greedy {n} new "
        f"tokens, {args.threads} threads, {args.reps} alternating rounds"
    )
    print(f"host: {timing.host_info()}")
    print(f"parameters {experts.get('parameters')}, read per token {experts.get('active_parameters')}")
    q4_tps = np.array([r["decode_tps"] for r in results.get("llama.cpp Q4_0", [{"decode_tps": np.nan}])])
    dense_tps = np.array([r["decode_tps"] for r in results["edgepipe int4, dense experts"]])
    print(
        f"{'runtime':<30} {'MB':>7} {'TTFT ms':>8} {'decode tok/s':>12} {'(min-max)':>11} {'vs Q4_0':>8} {'vs dense':>8}"
    )
    for name, runs in results.items():
        tps = np.array([r["decode_tps"] for r in runs])
        ttft = np.median([r["ttft_ms"] for r in runs])
        print(
            f"{name:<30} {sizes[name] / 1e6:7.1f} {ttft:8.1f} {np.median(tps):12.1f} "
            f"{f'({tps.min():.0f}-{tps.max():.0f})':>11} {np.median(tps / q4_tps):7.2f}x {np.median(tps / dense_tps):7.2f}x"
        )


if __name__ == "__main__":
    main()
