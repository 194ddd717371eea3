"""``python <bundle> bench`` for a text-generation bundle: the SCHEMA document.

Time to first token, prefill and decode tokens/s at several context lengths, load time and peak
memory, measured with the runtime's own Generator and the target's session settings. Also run as
``python -m edgepipe.runtime.generation_bench < request.json`` by the build host, so both read alike.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from . import timing
from .embedder import host_threads
from .encoder_bench import SAMPLE_TEXT, BenchError, LoadError, ShapeError
from .generator import GenerationConfig, Generator
from .integrity import RUNTIME_CONFIG, read_manifest, sha256_file
from .kvcache import MIN_CONTEXT
from .probe import arch
from .tasks import Task

# Generation's keys are not an encoder's shapes: a schema version of their own in the same family.
SCHEMA = "edgepipe.bench/2"
TASK = Task.GENERATION.manifest_name
# Positions in the KV cache when decoding starts: a chat turn, a page, a long document, and 2,048
# (a retrieval prompt), where a decode step reads the most cache and the peak memory is reached.
DEFAULT_CONTEXTS = (64, 512, 1024, 2048)
KEYS = ("time_to_first_token_ms", "prefill_tokens_per_s", "decode_tokens_per_s")
DRAFT_KEYS = ("drafted_tokens", "accepted_tokens")  # summed over a context's timed runs


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
    """What to measure; None means the default named in the comment."""

    contexts: tuple[int, ...] | None = None  # DEFAULT_CONTEXTS that fit, else the longest that does
    new_tokens: int = 32
    runs: int = 3
    warmup: int = 1
    threads: int | None = None  # the target's intra-op threads, capped at this machine's cores
    speculate: bool | None = None  # prompt-lookup drafts: the runtime's default (where output is unchanged)


def model_files(path: Path) -> list[Path]:
    """The ONNX file and the external data file the export writes beside it, where there is one."""
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def _contexts(settings: GenerationSettings, max_length: int) -> tuple[int, ...]:
    if settings.runs < 1 or settings.warmup < 0 or settings.new_tokens < 2:
        raise ShapeError("runs must be at least 1, warmup at least 0 and new tokens at least 2")
    if settings.threads is not None and settings.threads < 1:
        raise ShapeError("threads must be at least 1")
    room = max_length - settings.new_tokens
    if room < 1:
        raise ShapeError(f"{settings.new_tokens} new tokens leave no room in {max_length} positions")
    if settings.contexts:
        long = [c for c in settings.contexts if c > room]
        if long:
            raise ShapeError(
                f"context {long[0]} and {settings.new_tokens} new tokens are over the model's {max_length} positions"
            )
        return settings.contexts
    return tuple(c for c in DEFAULT_CONTEXTS if c <= room) or (room,)


def measure(root: Path, settings: GenerationSettings, *, measured_on: str = "bundle runtime") -> dict[str, Any]:
    """Benchmark the text-generation bundle at ``root``: the SCHEMA document."""
    manifest = read_manifest(root)
    config = GenerationConfig.load(root / RUNTIME_CONFIG)
    contexts = _contexts(settings, config.max_length)
    # No EOS: every run generates exactly new_tokens, whatever the weights say.
    config = dataclasses.replace(config, eos_token_ids=())
    threads = settings.threads or host_threads(config.intra_op_threads)
    path = root / "model" / "model.onnx"
    start = time.perf_counter()
    # A cache for the longest run, whatever the target's ram_mb would make the default context.
    longest = min(config.max_length, max(MIN_CONTEXT, max(contexts) + settings.new_tokens))
    try:
        generator = Generator(path, root / "tokenizer" / "tokenizer.json", config, threads, max_context=longest)
    except Exception as exc:  # onnxruntime's own exception types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"{path}: onnxruntime cannot load this model: {reason}") from None
    load_ms = round((time.perf_counter() - start) * 1000, 3)
    sample = generator.encode(SAMPLE_TEXT)
    results, first_ms = [], None
    for context in contexts:
        ids = np.resize(np.asarray(sample, dtype=np.int64), context).tolist()
        if first_ms is None:
            first_ms = generator.generate(ids, max_new_tokens=1).timings["time_to_first_token_ms"]
        new, speculate = settings.new_tokens, settings.speculate
        for _ in range(settings.warmup):
            generator.generate(ids, max_new_tokens=new, speculate=speculate)
        runs = [generator.generate(ids, max_new_tokens=new, speculate=speculate).timings for _ in range(settings.runs)]
        results.append(
            {
                "context_len": context,
                "complete": True,  # as edgepipe.bench/1's shapes; every run is timed here
                "new_tokens": runs[0]["new_tokens"],
                "runs": len(runs),
                **{k: round(statistics.median(r[k] for r in runs), 2) for k in KEYS},
                **{k: sum(int(r.get(k, 0)) for r in runs) for k in DRAFT_KEYS},
            }
        )
    target = manifest.get("target", {})
    machine = timing.host_info()
    target_arch = target.get("platform", {}).get("arch")
    return {
        "schema": SCHEMA,
        "task": TASK,
        "measured_on": measured_on,
        "machine": machine,
        "target": {"name": target.get("name"), "arch": target_arch},
        "machine_matches_target_arch": arch(str(machine["machine"])) == arch(str(target_arch or "")),
        "onnxruntime": ort.__version__,
        "provider": generator.session.get_providers()[0],
        "threads": threads,
        "target_threads": config.intra_op_threads,
        "inter_op_threads": config.inter_op_threads,
        "runs": settings.runs,
        "warmup": settings.warmup,
        "new_tokens": settings.new_tokens,
        "complete": True,
        "speculative": generator.speculates(settings.speculate),
        "models": {
            "model": {
                "path": "model/model.onnx",
                # The graph and its weights: a decoder's are in model.onnx.data beside it.
                "size_bytes": sum(os.path.getsize(f) for f in model_files(path)),
                "graph_bytes": os.path.getsize(path),
                "sha256": sha256_file(path),
                "load_ms": load_ms,
                "first_inference_ms": first_ms,
            },
            "fp32": None,
        },
        "peak_rss_mb": timing.peak_rss_mb(),
        "results": results,
    }


def text(result: dict[str, Any]) -> str:
    """A plain table of the SCHEMA document."""
    m, machine = result["models"]["model"], result["machine"]
    lines = [
        f"measured on {machine['cpu']} ({machine['machine']}), {result['threads']} threads, "
        f"{result['provider']}; target {result['target']['name']}",
        f"model {m['size_bytes'] / 1e6:.1f} MB: load {m['load_ms']:.0f} ms; "
        f"peak RSS {result['peak_rss_mb']} MB; {result['new_tokens']} new tokens per run",
        f"{'context':>7} {'runs':>5} {'first token ms':>14} {'prefill tok/s':>13} {'decode tok/s':>12}",
    ]
    for r in result["results"]:
        lines.append(
            f"{r['context_len']:>7} {r['runs']:>5} {r['time_to_first_token_ms']:>14.1f} "
            f"{r['prefill_tokens_per_s']:>13.1f} {r['decode_tokens_per_s']:>12.1f}"
        )
    if result.get("speculative"):
        drafted = sum(r.get("drafted_tokens", 0) for r in result["results"])
        accepted = sum(r.get("accepted_tokens", 0) for r in result["results"])
        lines.append(
            f"speculative decoding on: {accepted} of {drafted} drafted tokens accepted (the prompt repeats "
            "one text, which drafts find easily; --no-speculate times one token a step)"
        )
    return "\n".join(lines)


def main() -> int:
    """``python -m edgepipe.runtime.generation_bench < request.json``: {"root", "settings",
    "measured_on"} in, the document out (stdout), an error as one ``error:`` line (stderr)."""
    import json
    import sys

    request = json.load(sys.stdin)
    settings = request.get("settings", {})
    if settings.get("contexts"):
        settings["contexts"] = tuple(settings["contexts"])
    try:
        result = measure(
            Path(request["root"]),
            GenerationSettings(**settings),
            measured_on=request["measured_on"],
        )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4 if isinstance(exc, LoadError) else 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
