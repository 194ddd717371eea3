"""edgepipe's int4 and int8 vs llama.cpp Q4_0, Q4_1, Q4_K_M, Q8_0 on a real decoder, one run.

The model is the off-grid SmolLM2-135M-Instruct (`make real-llm`): the same function as the shipped
one, its weights off the Q4_1 grid they were stored on (which flatters 4-bit formats of that layout).
Every format is made from the same weights: edgepipe's default build for laptop-avx2 (whatever its
default profile is), its Q4_0-class int4 (x86-int4-fast) and its int8 profiles; llama.cpp's own
converter and quantizer for the GGUFs.

Accuracy against PyTorch fp32 on English paragraphs edgepipe never tunes on
(benchmarks/data/heldout_paragraphs.txt), one forward pass each: perplexity of the paragraphs'
actual next tokens, mean KL(fp32 || format) and top-1 agreement over every position. Speed: greedy
decode tok/s, batch 1, the same prompt, 2 threads, every runtime timed in alternation (as bench_llm).

    make bench-llm-real                  # builds llama-cpp-python and the models once
    python benchmarks/bench_llm_real.py --model DIR --llama-python PY --llama-cpp SRC [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from bench_llm import (
    PROMPT,
    add_common_arguments,
    convert_gguf,
    edgepipe_generator,
    generator_run,
    kl_and_agreement,
)
from context_sweep import Worker

from edgepipe import catalog
from edgepipe.runtime import timing

HERE = Path(__file__).resolve().parent
PARAGRAPHS = HERE / "data" / "heldout_paragraphs.txt"
TARGET = "laptop-avx2"
INT8 = "cpu-int8-llm"
INT8_EXACT = "cpu-int8-llm-exact"
INT4_FAST = "x86-int4-fast"
GGUF_TYPES = ("Q4_0", "Q4_1", "Q4_K_M", "Q8_0")


def build(model: Path, dist: Path, name: str, profile: str | None) -> dict[str, Any]:
    """`edgepipe build` for laptop-avx2 (its stage cache makes an unchanged rebuild quick)."""
    cmd = [
        sys.executable,
        "-m",
        "edgepipe",
        "build",
        "--model",
        str(model),
        "--target",
        TARGET,
        "--out",
        str(dist),
        "--name",
        name,
        "--no-bench",
        "--json",
    ]
    if profile:
        cmd += ["--profile", profile]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    bundle = Path(summary["bundle_dir"])
    summary["manifest"] = json.loads((bundle / "manifest.json").read_text())
    summary["onnx"] = bundle / "model" / "model.onnx"
    return dict(summary)


def onnx_mb(model: Path) -> float:
    """The ONNX file and its external data, if any."""
    files = [model, *model.parent.glob(f"{model.name}.data"), *model.parent.glob("*.onnx_data")]
    return sum(f.stat().st_size for f in files) / 1e6


def paragraphs() -> list[str]:
    return [p for p in PARAGRAPHS.read_text(encoding="utf-8").splitlines() if p.strip()]


def check_tokenizer(hf: Path, gguf: Path, llama: Worker) -> None:
    """The model's tokenizer (rebuilt by edgepipe from ``gguf``) gives llama.cpp's ids for it."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(hf / "tokenizer.json"))
    texts = [*paragraphs(), PROMPT]
    theirs = llama("tokenize", path=str(gguf), texts=texts)["ids"]
    same = [tokenizer.encode(t).ids == ids for t, ids in zip(texts, theirs, strict=True)]
    print(f"tokenizer: ids equal to llama.cpp's for {gguf.name} on {sum(same)}/{len(same)} texts")
    if not all(same):
        raise SystemExit(f"{hf}: its tokenizer does not give llama.cpp's ids for {gguf}")


def scores(hf: Path, edge: dict[str, Any], llama: Worker, ggufs: list[str], work: Path) -> dict[str, dict[str, float]]:
    """Perplexity, mean KL(fp32 || format) and top-1 agreement over every paragraph position."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tokenizer = Tokenizer.from_file(str(hf / "tokenizer.json"))
    texts = paragraphs()
    reference = AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    per: dict[str, dict[str, list[float]]] = {}
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text).ids[:448]
        with torch.no_grad():
            ref = reference(torch.tensor([ids])).logits[0].numpy()
        logits = {"PyTorch fp32": ref, **{name: gen.logits(ids) for name, gen in edge.items()}}
        for name in ggufs:
            out = work / f"logits-{i}.npy"
            llama("logits", name=f"{name} logits", ids=ids, out=str(out))
            logits[name] = np.load(out)
        nxt = np.asarray(ids[1:])
        for name, test in logits.items():
            x = test.astype(np.float64) - test.max(axis=-1, keepdims=True)
            logp = x - np.log(np.exp(x).sum(axis=-1, keepdims=True))
            kl, agree = kl_and_agreement(ref, test)
            row = per.setdefault(name, {"nll": [], "kl": [], "agree": [], "n": []})
            row["nll"].append(float(-logp[np.arange(len(nxt)), nxt].sum()))
            row["kl"].append(kl * len(ids))
            row["agree"].append(agree * len(ids))
            row["n"].append(len(ids))
    out: dict[str, dict[str, float]] = {}
    for name, row in per.items():
        positions = sum(row["n"])
        out[name] = {
            "ppl": float(np.exp(sum(row["nll"]) / (positions - len(row["n"])))),
            "kl": sum(row["kl"]) / positions,
            "agree": sum(row["agree"]) / positions,
        }
    out["_"] = {"paragraphs": len(texts), "tokens": sum(per["PyTorch fp32"]["n"])}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the off-grid model directory")
    parser.add_argument(
        "--gguf",
        type=Path,
        help="the GGUF the model came from: its llama.cpp ids are checked against "
        "the model's tokenizer on the paragraphs",
    )
    add_common_arguments(parser)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="edgepipe-llmbench-real-") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        run(args, args.model.resolve(), work)


def run(args: argparse.Namespace, hf: Path, work: Path) -> None:
    default = catalog.targets().load(TARGET).profile_for("generation")
    builds = {
        "int4": build(hf, work / "dist", "real-default", None),
        "int4-fast": build(hf, work / "dist", "real-int4-fast", INT4_FAST),
        "int8": build(hf, work / "dist", "real-int8", INT8),
        "int8-exact": build(hf, work / "dist", "real-int8-exact", INT8_EXACT),
    }
    labels = {
        key: f"edgepipe {b['profile']}" + (f" ({key} default)" if key == "int4" else "") for key, b in builds.items()
    }
    llama = Worker(args.llama_python, "llamacpp_worker.py")
    if args.gguf:
        check_tokenizer(hf, args.gguf.resolve(), llama)
    f32 = convert_gguf(hf, args.llama_cpp.resolve(), work / "f32.gguf", trained_here=False)
    ggufs: dict[str, Path] = {}
    for ftype in GGUF_TYPES:
        dst = work / f"{ftype}.gguf"
        if not dst.exists():
            llama("quantize", src=str(f32), dst=str(dst), ftype=ftype)
        ggufs[f"llama.cpp {ftype}"] = dst
    for name, path in ggufs.items():
        llama("load", name=name, path=str(path), threads=args.threads)
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(hf / "tokenizer.json")).encode(PROMPT).ids
    gens = {labels[k]: edgepipe_generator(b["onnx"], hf, args.threads, args.spin) for k, b in builds.items()}
    n = args.new_tokens
    calls = {
        **{name: (lambda g=g: generator_run(g, ids, n)) for name, g in gens.items()},
        **{name: (lambda name=name: llama("generate", name=name, ids=ids, n=n)) for name in ggufs},
    }
    for call in calls.values():  # warm-up: first-run allocations, page cache
        call()
    tps: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.reps):
        for name, call in calls.items():
            tps[name].append(call()["decode_tps"])
    for name, path in ggufs.items():
        llama("load", name=f"{name} logits", path=str(path), threads=args.threads, logits_all=True)
    measured = scores(hf, gens, llama, list(ggufs), work)
    llama.close()
    sizes = {
        "PyTorch fp32": sum(f.stat().st_size for f in hf.glob("*.safetensors")) / 1e6,
        **{labels[k]: onnx_mb(b["onnx"]) for k, b in builds.items()},
        **{name: p.stat().st_size / 1e6 for name, p in ggufs.items()},
    }
    report(args, hf, default, builds, labels, ids, sizes, tps, measured)


def report(
    args: argparse.Namespace,
    hf: Path,
    default: str,
    builds: dict[str, dict[str, Any]],
    labels: dict[str, str],
    ids: list[int],
    sizes: dict[str, float],
    tps: dict[str, list[float]],
    measured: dict[str, dict[str, float]],
) -> None:
    counts = measured.pop("_")
    q4km, q40, q80 = "llama.cpp Q4_K_M", "llama.cpp Q4_0", "llama.cpp Q8_0"
    base = np.array(tps[q40])
    print(f"model: {hf} (off-grid SmolLM2-135M-Instruct)")
    print(
        f"accuracy vs PyTorch fp32: {counts['paragraphs']} held-out paragraphs, "
        f"{counts['tokens']} tokens, one forward pass each; speed: prompt {len(ids)} tokens, "
        f"greedy {args.new_tokens} new, {args.threads} threads, {args.reps} alternating rounds, "
        f"onnxruntime spin {'on' if args.spin else 'off'}"
    )
    print(f"host: {timing.host_info()}")
    asked = {"int4": default, "int4-fast": INT4_FAST, "int8": INT8, "int8-exact": INT8_EXACT}
    for key, b in builds.items():
        tried = ", ".join(f"{a.get('profile')}: {a.get('result', a.get('status', '?'))}" for a in b.get("attempts", []))
        print(f"edgepipe {key}: kept {b['profile']} (asked: {asked[key]}); tried {tried or '-'}")
    print()
    print(
        "| format | MB | size / Q4_K_M | perplexity | mean KL | KL / Q4_K_M | top-1 agreement "
        "| decode tok/s | tok/s / Q4_0 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ["PyTorch fp32", *labels.values(), *(f"llama.cpp {t}" for t in GGUF_TYPES)]:
        m = measured[name]
        speed, ratio = "-", "-"
        if name in tps:
            speed = f"{np.median(tps[name]):.1f}"
            ratio = f"{np.median(np.array(tps[name]) / base):.2f}x"
        kl_ratio = f"{m['kl'] / measured[q4km]['kl']:.2f}" if name != "PyTorch fp32" else "-"
        print(
            f"| {name} | {sizes[name]:.1f} | {sizes[name] / sizes[q4km]:.2f} | {m['ppl']:.2f} "
            f"| {m['kl']:.4f} | {kl_ratio} | {m['agree']:.3f} | {speed} | {ratio} |"
        )
    print()

    def against(kind: str, name: str, ref: str, perplexity: bool = True) -> dict[str, bool]:
        """``name`` no worse than llama.cpp's ``ref`` on mean KL, perplexity and size; an int4
        also at least Q4_0's decode speed."""
        short = ref.removeprefix("llama.cpp ")
        met = {f"{kind} ({name}): mean KL <= {short}'s": measured[name]["kl"] <= measured[ref]["kl"]}
        if perplexity:
            met[f"{kind} ({name}): perplexity <= {short}'s"] = measured[name]["ppl"] <= measured[ref]["ppl"]
        met[f"{kind} ({name}): size <= {short}'s"] = sizes[name] <= sizes[ref]
        if kind == "int4":
            speed = float(np.median(np.array(tps[name]) / base))
            met[f"{kind} ({name}): decode tok/s >= Q4_0's ({speed:.2f}x)"] = speed >= 1.0
        return met

    goals = {
        **against("int4", labels["int4"], q4km),
        **against("int4", labels["int4-fast"], q40),
        **against("int8", labels["int8"], q80, perplexity=False),
        **against("int8", labels["int8-exact"], q80, perplexity=False),
    }
    for goal, met in goals.items():
        print(f"- {'met' if met else 'NOT met'}: {goal}")


if __name__ == "__main__":
    main()
