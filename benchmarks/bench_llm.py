"""edgepipe int4 vs llama.cpp (Q4_0, Q8_0) on a random Llama with SmolLM-135M's shape, one run;
then the context sweep (context_sweep.py): prefill and decode at prompts of 64 to 2,048 tokens with
peak RSS, for the SmolLM2-135M and Qwen2.5-0.5B shapes, and the Llama-3.2-1B shape (RoPE scaling
"llama3") at the 64-token prompt; each shape's int4 model is the product's `edgepipe build`.

Speed: greedy, batch 1, the same prompt ids, N new tokens, 2 threads; every runtime is timed in
alternation, REPS rounds, and the table shows medians and the median per-round ratio of decode
tok/s to llama.cpp Q4_0. Accuracy: next-token agreement and mean KL(fp32 || quantized) against
PyTorch fp32 over edgepipe's evaluation texts, each text one forward pass.

    make bench-llm                    # builds llama-cpp-python in its own venv once
    make bench-llm LLAMA_VENV=/path/.llamacpp-venv LLM_WORK=/tmp/llm LLM_ARGS=--sweep-only
    python benchmarks/bench_llm.py --llama-python V/bin/python --llama-cpp SRC --work DIR

``--work`` keeps the models between runs (they take minutes to build). onnxruntime's threads
busy-wait between parallel sections, as they do when the bundle runs (and as llama.cpp's do);
``--no-spin`` turns that off. Measured here on an idle machine, the two settings moved the int4 vs
Q4_0 ratio from ~1.05x (spin, the bundle's default) to ~0.9x (no spin).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import context_sweep  # beside this script
import numpy as np

from edgepipe.runtime import timing
from edgepipe.runtime.generator import Generator
from edgepipe.tasks import decoder_runtime
from edgepipe.tasks.texts import builtin_texts

HERE = Path(__file__).resolve().parent
# SmolLM-135M's shape; the weights are random and the tokenizer is a small BPE trained in code,
# padded to SmolLM's vocabulary (its ids are a subset).
SMOLLM = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
)
PROMPT = "The quick brown fox jumps over the lazy dog while the model writes a short story about edge devices."


def make_model(dest: Path) -> Path:
    return context_sweep.make_model({"model_type": "llama", **SMOLLM}, dest)


def build_edgepipe_int4(hf: Path, work: Path) -> dict[str, Path]:
    """The product's own build (`edgepipe build --target laptop-avx2`: its default int4 profile),
    and, to show what the attention rewrite is worth in the same run, the same int4 settings on
    the plain optimum export."""
    from optimum.exporters.onnx import main_export

    dist = work / "dist"
    bundle = dist / "smollm-shape-laptop-avx2"
    if not (bundle / "manifest.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "edgepipe",
            "build",
            "--model",
            str(hf),
            "--target",
            "laptop-avx2",
            "--out",
            str(dist),
            "--name",
            "smollm-shape",
            "--no-bench",
            "--json",
        ]
        built = subprocess.run(cmd, check=True, capture_output=True, text=True)
        summary = json.loads(built.stdout)
        print(f"edgepipe build: profile {summary.get('profile')}, {summary.get('accuracy')}")
    export = work / "onnx-fp32"
    if not (export / "model.onnx").exists():
        main_export(str(hf), output=str(export), task="text-generation-with-past", do_validation=False)
    plain = work / "int4" / "model.onnx"
    if not plain.exists():
        quantize_int4(export / "model.onnx", plain)
    return {"bundle": bundle / "model" / "model.onnx", "plain": plain}


def quantize_int4(src: Path | Any, dst: Path) -> None:
    """Plain int4 MatMulNBits (RTN, block 32, symmetric) of a model file or a loaded ModelProto."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    algo = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)) if isinstance(src, Path) else src,
        block_size=32,
        is_symmetric=True,
        accuracy_level=4,
        algo_config=algo,
    )
    quantizer.process()
    dst.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def convert_gguf(hf: Path, llama_cpp: Path, dest: Path, trained_here: bool = True, outtype: str = "f32") -> Path:
    """llama.cpp's convert_hf_to_gguf.py (to ``outtype``); for a tokenizer ``trained_here``, taught
    that it is plain byte-level BPE.

    The script refuses pre-tokenizers it has no hash for, so a tokenizer trained in code is declared
    "gpt-2"; a real model's (SmolLM2's: "smollm") is recognised by its hash. The SentencePiece
    attempt is skipped for both: neither has a tokenizer.model.
    """
    if dest.exists():
        return dest
    # Without a tokenizer.model the SentencePiece attempt fails anyway, but by importing
    # sentencepiece first (an ImportError the script does not catch where it is not installed).
    patch = """
import conversion.base as base
def byte_level_only(self, *args, **kwargs):
    raise FileNotFoundError("no tokenizer.model: byte-level BPE tokenizer only")
base.TextModel._set_vocab_sentencepiece = byte_level_only
"""
    if trained_here:
        patch += """
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
base.TextModel._set_vocab_llama_hf = byte_level_only
"""
    script = f"""
import runpy, sys
sys.path[:0] = [{str(llama_cpp)!r}, {str(llama_cpp / "gguf-py")!r}]
{patch}
sys.argv = ["convert_hf_to_gguf.py", {str(hf)!r}, "--outfile", {str(dest)!r}, "--outtype", {outtype!r}]
runpy.run_path({str(llama_cpp / "convert_hf_to_gguf.py")!r}, run_name="__main__")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=dest.parent)
    if done.returncode != 0:
        raise RuntimeError(f"convert_hf_to_gguf.py {hf} failed:\n{done.stderr[-2000:]}")
    return dest


class IOBoundDecoder:
    """Greedy decode with IO binding: each step's present OrtValues are bound as the next past.

    The runtime-recipe candidate, timed next to Generator (plain run() with numpy feeds).
    """

    def __init__(self, session: Any, max_length: int) -> None:
        self.session = session
        inputs = {i.name: i for i in session.get_inputs()}
        self.past = [n for n in inputs if n.startswith("past_key_values.")]
        shape = inputs[self.past[0]].shape
        self.empty = np.zeros((1, shape[1], 0, shape[3]), np.float32)
        self.has_positions = "position_ids" in inputs
        self.mask = np.ones((1, max_length), np.int64)
        self.positions = np.arange(max_length, dtype=np.int64)[None, :]

    def generate(self, ids: list[int], n: int) -> dict[str, Any]:
        binding = self.session.io_binding()
        for name in self.past:
            binding.bind_cpu_input(name, self.empty)
        step = np.asarray([ids], np.int64)
        start, tokens, first = time.perf_counter(), [], 0.0
        position = 0
        while len(tokens) < n:
            length = step.shape[1]
            binding.bind_cpu_input("input_ids", step)
            binding.bind_cpu_input("attention_mask", self.mask[:, : position + length])
            if self.has_positions:
                binding.bind_cpu_input("position_ids", self.positions[:, position : position + length])
            binding.bind_output("logits")
            for name in self.past:
                binding.bind_output(name.replace("past_key_values.", "present."))
            self.session.run_with_iobinding(binding)
            logits, *presents = binding.get_outputs()
            tokens.append(int(np.argmax(logits.numpy()[0, -1])))
            for name, value in zip(self.past, presents, strict=True):
                binding.bind_ortvalue_input(name, value)
            position += length
            step = np.asarray([[tokens[-1]]], np.int64)
            if len(tokens) == 1:
                first = time.perf_counter()
        done = time.perf_counter()
        return {
            "ttft_ms": (first - start) * 1e3,
            "decode_tps": (n - 1) / (done - first),
            "tokens": tokens,
        }


def edgepipe_generator(model: Path, hf: Path, threads: int, spin: bool) -> Generator:
    config = decoder_runtime.runtime_config(hf, model, threads, 1, ("CPUExecutionProvider",))
    # No EOS: every run makes exactly N tokens, as llama.cpp's loop does.
    config = dataclasses.replace(config, eos_token_ids=())
    return Generator(model, hf / "tokenizer.json", config, threads=threads, spin=spin)


def generator_run(gen: Generator, ids: list[int], n: int) -> dict[str, Any]:
    out = gen.generate(ids, max_new_tokens=n)
    return {
        "ttft_ms": out.timings["time_to_first_token_ms"],
        "decode_tps": out.timings["decode_tokens_per_s"],
        "tokens": out.token_ids,
    }


def kl_and_agreement(ref: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    p, q = log_softmax(ref), log_softmax(test)
    kl = float((np.exp(p) * (p - q)).sum(axis=-1).mean())
    return kl, float((ref.argmax(-1) == test.argmax(-1)).mean())


def accuracy(
    hf: Path, edge: dict[str, Generator], llama: context_sweep.Worker, llama_names: list[str], work: Path, count: int
) -> dict[str, tuple[float, float]]:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = Tokenizer.from_file(str(hf / "tokenizer.json"))
    texts = builtin_texts("embedding")[:count]
    reference = AutoModelForCausalLM.from_pretrained(hf).eval()
    totals: dict[str, list[tuple[float, float]]] = {}
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text).ids[:128]
        with torch.no_grad():
            ref = reference(torch.tensor([ids])).logits[0].numpy()
        scores = {name: gen.logits(ids) for name, gen in edge.items()}
        for name in llama_names:
            out = work / f"logits-{i}.npy"
            llama("logits", name=f"{name} logits", ids=ids, out=str(out))
            scores[name] = np.load(out)
        for name, test in scores.items():
            totals.setdefault(name, []).append(kl_and_agreement(ref, test))
    return {n: (float(np.mean([v[0] for v in s])), float(np.mean([v[1] for v in s]))) for n, s in totals.items()}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """llama.cpp's venv and sources, the work dir and the timing settings (bench-llm-real too)."""
    parser.add_argument("--llama-python", required=True, help="python of llama-cpp-python's venv")
    parser.add_argument(
        "--llama-cpp",
        type=Path,
        required=True,
        help="llama.cpp sources (the sdist's vendor/llama.cpp), for the converter",
    )
    parser.add_argument("--work", type=Path, help="keep the models here (default: a temp dir)")
    parser.add_argument("--reps", type=int, default=int(os.environ.get("REPS", 5)))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--no-spin", dest="spin", action="store_false", help="onnxruntime threads do not busy-wait (the bundle's do)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--texts", type=int, default=16, help="texts for the accuracy columns")
    parser.add_argument("--no-q8", action="store_true", help="skip llama.cpp Q8_0")
    context_sweep.add_arguments(parser)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="edgepipe-llmbench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.sweep_only:
            run(args, work.resolve())
        if not args.no_sweep:
            context_sweep.run(args, work.resolve())


def run(args: argparse.Namespace, work: Path) -> None:
    hf = make_model(work / "hf")
    onnx_models = build_edgepipe_int4(hf, work)
    llama = context_sweep.Worker(args.llama_python, "llamacpp_worker.py")
    ggufs = {"llama.cpp f32": convert_gguf(hf, args.llama_cpp.resolve(), work / "f32.gguf")}
    for ftype in ("Q4_0",) if args.no_q8 else ("Q4_0", "Q8_0"):
        dst = work / f"{ftype}.gguf"
        if not dst.exists():
            llama("quantize", src=str(ggufs["llama.cpp f32"]), dst=str(dst), ftype=ftype)
        ggufs[f"llama.cpp {ftype}"] = dst
    timed_gguf = [n for n in ggufs if n != "llama.cpp f32"]
    for name in timed_gguf:
        llama("load", name=name, path=str(ggufs[name]), threads=args.threads)
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(hf / "tokenizer.json")).encode(PROMPT).ids
    gens = {
        "edgepipe int4": edgepipe_generator(onnx_models["bundle"], hf, args.threads, args.spin),
        "edgepipe int4, no rewrite": edgepipe_generator(onnx_models["plain"], hf, args.threads, args.spin),
    }
    iobound = IOBoundDecoder(gens["edgepipe int4"].session, 2048)
    n = args.new_tokens
    calls = {
        "edgepipe int4": lambda: generator_run(gens["edgepipe int4"], ids, n),
        "edgepipe int4, IO binding loop": lambda: iobound.generate(ids, n),
        "edgepipe int4, no rewrite": lambda: generator_run(gens["edgepipe int4, no rewrite"], ids, n),
        **{name: (lambda name=name: llama("generate", name=name, ids=ids, n=n)) for name in timed_gguf},
    }
    for call in calls.values():  # warm-up: first-run allocations, page cache
        call()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in calls}
    for _ in range(args.reps):
        for name, call in calls.items():
            results[name].append(call())
    for name in timed_gguf:
        llama("load", name=f"{name} logits", path=str(ggufs[name]), threads=args.threads, logits_all=True)
    scores = accuracy(hf, gens, llama, timed_gguf, work, args.texts)
    llama.close()
    sizes = {
        "edgepipe int4": onnx_models["bundle"],
        "edgepipe int4, IO binding loop": onnx_models["bundle"],
        "edgepipe int4, no rewrite": onnx_models["plain"],
        **ggufs,
    }
    report(args, ids, results, {k: p.stat().st_size / 1e6 for k, p in sizes.items()}, scores)


def report(
    args: argparse.Namespace,
    ids: list[int],
    results: dict[str, list[dict[str, Any]]],
    sizes: dict[str, float],
    scores: dict[str, tuple[float, float]],
) -> None:
    base = np.array([r["decode_tps"] for r in results["llama.cpp Q4_0"]])
    print(
        f"random Llama, SmolLM-135M shape; prompt {len(ids)} tokens, greedy {args.new_tokens} new "
        f"tokens, {args.threads} threads, {args.reps} alternating rounds, onnxruntime spin "
        f"{'on' if args.spin else 'off'}"
    )
    print(f"host: {timing.host_info()}")
    print(
        f"{'runtime':<32} {'MB':>6} {'size/Q4_0':>9} {'TTFT ms':>8} {'decode tok/s':>12} "
        f"{'(min-max)':>13} {'vs Q4_0':>8} {'agree':>6} {'KL':>8}"
    )
    for name, runs in results.items():
        tps = np.array([r["decode_tps"] for r in runs])
        ttft = np.median([r["ttft_ms"] for r in runs])
        same_model = "edgepipe int4" if name == "edgepipe int4, IO binding loop" else name
        kl, agree = scores.get(same_model, (float("nan"), float("nan")))
        print(
            f"{name:<32} {sizes[name]:6.1f} {sizes[name] / sizes['llama.cpp Q4_0']:9.2f} "
            f"{ttft:8.1f} {np.median(tps):12.1f} {f'({tps.min():.0f}-{tps.max():.0f})':>13} "
            f"{np.median(tps / base):7.2f}x {agree:6.3f} {kl:8.4f}"
        )
    same = results["edgepipe int4"][0]["tokens"] == results["edgepipe int4, IO binding loop"][0]["tokens"]
    print(f"IO binding loop tokens == Generator tokens: {same}")
    print(
        "accuracy: next-token agreement and mean KL(fp32 || quantized) vs PyTorch fp32, "
        f"{args.texts} texts, one forward pass each"
    )


if __name__ == "__main__":
    main()
