"""Prefill and decode as the context grows: edgepipe int4 vs llama.cpp Q4_0, one alternating run.

For each model shape (random weights: speed does not depend on them), each prompt length L and each
round: edgepipe generates N greedy tokens after an L-token prompt, then llama.cpp does, each in its
own process (edgepipe's imports only the bundle's runtime), so that each process's peak RSS is its
model's. The table shows medians over the rounds: prefill tok/s (L / time to first token), decode
tok/s (N - 1 steps), the per-round decode ratio, and each process's peak RSS after its first run at
that length (lengths go up, so it is the peak of a generation that long).

    python benchmarks/bench_llm.py --llama-python V/bin/python --llama-cpp SRC --sweep-only
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
LENGTHS = (64, 512, 1024, 2048)
SHAPES: dict[str, dict[str, Any]] = {
    # SmolLM2-135M: Llama, 30 layers, 9 heads / 3 KV heads, tied, 8k context.
    "smollm2-135m": dict(
        model_type="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        int4="build",
    ),
    # Qwen2.5-0.5B: biased q/k/v, 24 layers, 14 heads / 2 KV heads, a 151,936-word tied vocabulary.
    "qwen2.5-0.5b": dict(
        model_type="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        int4="build",
    ),
    # Llama-3.2-1B: 16 layers, 32 heads / 8 KV heads of 64, a 128,256-word tied vocabulary and
    # RoPE scaling "llama3" (128k positions from an 8k original). Saved in bfloat16 as the real
    # checkpoint is (2.5 GB; the export is float32, 5 GB); timed at the short prompt by default.
    "llama3.2-1b": dict(
        model_type="llama",
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        rms_norm_eps=1e-5,
        int4="build",
        dtype="bfloat16",
        lengths=(64,),
    ),
}
# Keys of SHAPES that are the bench's, not config.json's.
BENCH_KEYS = ("int4", "dtype", "lengths")


def make_model(shape: dict[str, Any], dest: Path) -> Path:
    """A random-weight model of ``shape`` (a config.json's values) with the small BPE tokenizer of
    the tests (its ids are a subset of the model's vocabulary)."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, Qwen2Config

    sys.path.insert(0, str(HERE.parent))
    from tests.decoders import train_bpe

    if any(dest.glob("model*.safetensors")):
        return dest
    values = {k: v for k, v in shape.items() if k not in BENCH_KEYS}
    kind = values.pop("model_type")
    tokenizer = train_bpe(kind)
    cls = LlamaConfig if kind == "llama" else Qwen2Config
    config = cls(**values, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    dtype = getattr(torch, shape.get("dtype", "float32"))
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, do_sample=False
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def kv_cache_default() -> str:
    """The KV cache type of the product's int4 profile for the laptop (x86-int4)."""
    from edgepipe import catalog

    return catalog.profiles().load("x86-int4").kv_cache


def with_kv_cache(model: Path, dtype: str, hf: Path) -> Path:
    """``model``, or a copy in the shape's work dir (beside ``hf``) whose KV cache is ``dtype``
    (graph/kv_cache.py: int8's scales from the built-in calibration texts, as the build takes them)."""
    import onnx

    from edgepipe.graph import external, kv_cache
    from edgepipe.stages.quantize import CalibrationData, decoder_calibration
    from edgepipe.tasks.texts import builtin_calibration_texts

    if kv_cache.declared(onnx.load(str(model), load_external_data=False)) == dtype:
        return model
    dst = hf.parent / f"int4-kv-{dtype}" / "model.onnx"  # not in a bundle: verify would refuse
    if not dst.exists():
        dst.parent.mkdir(exist_ok=True)
        texts = builtin_calibration_texts("generation")
        calibration = CalibrationData(texts, hf / "tokenizer.json", 512)
        external.copy(model, dst)  # with its model.onnx.data
        record = kv_cache.apply(dst, dtype, decoder_calibration(calibration, dst))
        assert record["skipped"] is None, record["skipped"]
        external.map_weights(dst)  # as the build leaves a decoder
    return dst


def edgepipe_int4(
    hf: Path, work: Path, how: str, name: str, profile: str | None = None, block: int = 32
) -> tuple[Path, str]:
    """The int4 model and how its attention was built: ``build`` is the product's (`edgepipe
    build --target laptop-avx2`, models over 2 GB of fp32 too); ``quick`` is the attention
    rewrite, round-to-nearest int4 MatMulNBits (block 32, zero points) and a 4-bit embedding table
    (GatherBlockQuantized), minutes faster to make (no GPTQ, no sensitivity ranking)."""
    import onnx
    from optimum.exporters.onnx import main_export

    from edgepipe.graph import decoder_graph, external, nbits, weight_only

    if how == "build":
        # One bundle per profile, named as edgepipe spells it (qwen2-5-0-5b-...).
        dist = work / (f"dist-{profile}" if profile else "dist")
        built = sorted(dist.glob("*-laptop-avx2/manifest.json"))
        if not built:
            # No stage cache: the bundle is what is kept, and a multi-GB export copied into the
            # cache would only fill the disk.
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
                name,
                "--no-bench",
                "--no-cache",
                "--profile",
                str(random_weights_profile(work, profile)),
                "--json",
            ]
            start = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"edgepipe build of {hf} failed:\n{done.stderr[-3000:]}")
            summary = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{name}: edgepipe build {time.perf_counter() - start:.0f} s, profile "
                f"{summary['profile']}, {summary['model_size_bytes'] / 1e6:.1f} MB"
            )
            built = [Path(summary["bundle_dir"]) / "manifest.json"]
        bundle = built[0].parent
        graph = json.loads(built[0].read_text())["stages"]["export"]["graph"]
        return bundle / "model" / "model.onnx", attention(graph)
    quick = work / ("quick-int4" if block == 32 else f"quick-int4-b{block}") / "model.onnx"
    export = work / "onnx-fp32"
    if not (export / "model.onnx").exists():
        # No post-processing: optimum's tied-weights pass fails to serialize a model over 2 GB.
        main_export(
            str(hf), output=str(export), task="text-generation-with-past", do_validation=False, no_post_process=True
        )
    record = quick.parent / "graph.json"
    if not record.exists():
        model = external.load(export / "model.onnx")  # the weights mapped, not loaded
        info = decoder_graph.optimize_model(model, json.loads((hf / "config.json").read_text()))
        plan = {node.name: 4 for node in nbits.weight_matmuls(model.graph)}
        nbits.quantize(model.graph, plan, block, 4)  # reads the mapped weights one at a time
        weight_only.quantize_tables(model.graph, 4, block, 4)
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        quick.parent.mkdir(parents=True, exist_ok=True)
        external.save(model, quick)
        record.write_text(json.dumps({k: v for k, v in info.items() if k != "op_counts"}))
    info = json.loads(record.read_text())
    return quick, attention(info)


def random_weights_profile(work: Path, name: str | None = None) -> Path:
    """The profile ``name`` (default: laptop-avx2's for decoders, x86-int4) with its accuracy bar
    lowered to what random weights can meet. Its bars were set on a real model; on random weights
    (nearly flat logits) the guard would only decide, by chance, how many MatMuls stay 8-bit, and
    so the speed."""
    from edgepipe import catalog

    profile = catalog.profiles().load(name or catalog.targets().load("laptop-avx2").profile_for("generation"))
    name = f"{profile.name}-random-weights"
    accuracy = profile.accuracy.model_copy(update={"min": 0.05, "max_kl": None, "max_perplexity_ratio": None})
    data = profile.model_copy(update={"name": name, "accuracy": accuracy, "fallbacks": []})
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(data.model_dump(mode="json"), indent=1))  # JSON is YAML
    return path


def attention(graph: dict[str, Any]) -> str:
    """How the attention runs, from decoder_graph.optimize's record."""
    if graph.get("attention_layers_fused"):
        return f"fused (GroupQueryAttention) in {graph['attention_layers_fused']} layers"
    return f"the plain path, as exported: {graph.get('skipped')}"


class Worker:
    """A worker process speaking one JSON line per request."""

    def __init__(self, python: str, script: str) -> None:
        self.proc = subprocess.Popen(
            [python, str(HERE / script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
            cwd=HERE.parent,
        )

    def __call__(self, op: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise RuntimeError(f"{self.proc.args[1]}, {op}: {reply['error']}")
        return dict(reply)

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def sweep_shape(args: argparse.Namespace, shape: str, work: Path) -> dict[str, Any]:
    """Both runtimes at every length, alternating; the rows of one shape's table."""
    from bench_llm import convert_gguf

    from edgepipe.tasks import decoder_runtime

    hf = make_model(SHAPES[shape], work / "hf")
    how = args.int4 or SHAPES[shape]["int4"]
    kinds = args.kv_cache.split(",") if args.kv_cache else [kv_cache_default()]
    if how == "quick" and args.block_sizes:  # one model per block size, the first cache type
        models, attended = {}, ""
        for block in args.block_sizes:
            built, attended = edgepipe_int4(hf, work, how, shape, block=block)
            models[f"edgepipe int4, block {block}"] = with_kv_cache(built, kinds[0], hf)
    else:
        built, attended = edgepipe_int4(hf, work, how, shape, args.profile)
        models = {
            f"edgepipe int4, {kind} cache" if len(kinds) > 1 else "edgepipe int4": with_kv_cache(built, kind, hf)
            for kind in kinds
        }
    model = next(iter(models.values()))
    # The Q4_0 source: float32, or bfloat16 for a bfloat16 checkpoint (the same values, half the
    # disk).
    outtype = "bf16" if SHAPES[shape].get("dtype") == "bfloat16" else "f32"
    source = convert_gguf(hf, args.llama_cpp.resolve(), work / f"{outtype}.gguf", outtype=outtype)
    q4 = work / "Q4_0.gguf"
    lengths = lengths_of(args, shape)
    n_ctx = max(lengths) + args.new_tokens
    runtime = decoder_runtime.runtime_config(hf, model, args.threads, 1, ("CPUExecutionProvider",))
    edge = {name: Worker(sys.executable, "edgepipe_worker.py") for name in models}
    paths = dict(models)
    if args.with_plain:
        edge["edgepipe int4, plain loop"] = Worker(sys.executable, "edgepipe_worker.py")
        paths["edgepipe int4, plain loop"] = model
    llama = Worker(args.llama_python, "llamacpp_worker.py")
    if not q4.exists():
        llama("quantize", src=str(source), dst=str(q4), ftype="Q4_0")
    llama("load", name="q4", path=str(q4), threads=args.threads, n_ctx=n_ctx)
    loaded = {}
    for name, worker in edge.items():
        loaded[name] = worker(
            "load",
            model=str(paths[name]),
            tokenizer=str(hf / "tokenizer.json"),
            runtime=runtime.to_json(),
            threads=args.threads,
            max_context=n_ctx,
            plain=name.endswith("plain loop"),
        )
    calls = {
        **{name: (lambda ids, w=w: w("generate", ids=ids, n=args.new_tokens)) for name, w in edge.items()},
        "llama.cpp Q4_0": lambda ids: llama("generate", name="q4", ids=ids, n=args.new_tokens),
    }
    workers = {**edge, "llama.cpp Q4_0": llama}
    rng = np.random.default_rng(0)
    prompts = {n: [1, *rng.integers(3, 380, n - 1).tolist()] for n in lengths}
    for call in calls.values():  # warm-up: first-run allocations, page cache
        call(prompts[min(lengths)])
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    peaks: dict[tuple[str, int], float] = {}
    for round_ in range(args.reps):
        for length in sorted(lengths):
            for name, call in calls.items():
                runs.setdefault((name, length), []).append(call(prompts[length]))
                if round_ == 0:
                    peaks[name, length] = workers[name]("rss")["peak_rss_mb"]
    for worker in workers.values():
        worker.close()
    how = f"{how}, {args.profile}" if args.profile and how == "build" else how
    return {
        "runs": runs,
        "peaks": peaks,
        "names": list(calls),
        "int4": how,
        "loaded": loaded,
        "attention": attended,
        "lengths": lengths,
    }


def lengths_of(args: argparse.Namespace, shape: str) -> list[int]:
    """``--lengths``, else the shape's own (the Llama-3.2 shape: the short prompt only)."""
    return list(args.lengths or SHAPES[shape].get("lengths", LENGTHS))


def report(args: argparse.Namespace, shape: str, result: dict[str, Any]) -> None:
    runs, peaks, names = result["runs"], result["peaks"], result["names"]
    lengths = result["lengths"]
    print(
        f"\n{shape} shape (random weights), edgepipe int4 ({result['int4']}) vs llama.cpp Q4_0: greedy "
        f"{args.new_tokens} new tokens after an L-token prompt, {args.threads} threads, "
        f"{args.reps} alternating rounds, medians"
    )
    head = " / ".join(names)
    base = "llama.cpp Q4_0"
    ours = [n for n in names if n != base]
    print(
        f"| prompt tokens | prefill tok/s, {head} | decode tok/s, {head} | decode ratio, "
        f"{' / '.join(ours)} | peak RSS MB, {head} |"
    )
    print("|---|---|---|---|---|")
    for length in sorted(lengths):
        prefill = [np.median([length / (r["ttft_ms"] / 1e3) for r in runs[n, length]]) for n in names]
        decode = [np.median([r["decode_tps"] for r in runs[n, length]]) for n in names]
        ratios = [
            np.median(
                [a["decode_tps"] / b["decode_tps"] for a, b in zip(runs[n, length], runs[base, length], strict=True)]
            )
            for n in ours
        ]
        print(
            f"| {length} | {' / '.join(f'{v:.0f}' for v in prefill)} "
            f"| {' / '.join(f'{v:.1f}' for v in decode)} "
            f"| {' / '.join(f'{r:.2f}x' for r in ratios)} "
            f"| {' / '.join(f'{peaks[n, length]:.0f}' for n in names)} |"
        )
    for name, how in result["loaded"].items():
        print(f"{name}: in-place KV cache {how['in_place']}, prefill chunk {how['prefill_chunk']}")
    print(f"edgepipe int4 attention: {result['attention']}")
    same = runs[names[0], min(lengths)][0]["tokens"] == runs[base, min(lengths)][0]["tokens"]
    print(f"int4 and Q4_0 greedy tokens equal at {min(lengths)}: {same} (quantizers differ)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep-only", action="store_true", help="only the context sweep")
    parser.add_argument("--no-sweep", action="store_true", help="skip the context sweep")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated shapes")
    parser.add_argument(
        "--lengths",
        type=lambda s: [int(x) for x in s.split(",")],
        help="prompt tokens, comma-separated (default: 64,512,1024,2048; llama3.2-1b: 64)",
    )
    parser.add_argument("--sweep-new-tokens", dest="sweep_new_tokens", type=int, default=32)
    parser.add_argument(
        "--int4",
        choices=("build", "quick"),
        help="edgepipe's model: the product's build (default), or rewrite + plain int4",
    )
    parser.add_argument(
        "--block-sizes",
        dest="block_sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        help="with --int4 quick: one model per MatMulNBits block size, side by side (e.g. 32,64,128; default 32)",
    )
    parser.add_argument(
        "--profile",
        help="edgepipe's int4 profile for --int4 build (default: "
        "laptop-avx2's, x86-int4), its bar lowered for random weights",
    )
    parser.add_argument(
        "--kv-cache",
        help="edgepipe's KV cache type, or several side by side (float32,int8; default: the x86-int4 profile's)",
    )
    parser.add_argument("--with-plain", action="store_true", help="also time the runtime with the in-place cache off")


def run(args: argparse.Namespace, work: Path) -> None:
    sweep = argparse.Namespace(**{**vars(args), "new_tokens": args.sweep_new_tokens})
    for shape in args.shapes.split(","):
        dest = work / f"sweep-{shape}"
        dest.mkdir(parents=True, exist_ok=True)
        report(sweep, shape, sweep_shape(sweep, shape, dest))
