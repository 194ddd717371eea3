"""The benchmark behind ``edgepipe bench``, the build's bench stage and ``python <bundle> bench``.

One implementation and one JSON schema (SCHEMA, documented in the README) for all three, so a
number measured on the device reads exactly like one measured on the build host.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from . import timing
from .embedder import (
    RUNTIME_CONFIG,
    EmbeddingConfig,
    encoder_feeds,
    host_threads,
    open_session,
)
from .integrity import read_manifest, sha256_file
from .probe import arch
from .scorer import ScoringConfig
from .tasks import Task

SCHEMA = "edgepipe.bench/1"
# Models one encoder pass answers for: the same inputs, the same timing.
ENCODER_TASKS = tuple(t.manifest_name for t in (Task.EMBEDDING, Task.CLASSIFICATION, Task.RERANKING))
# Exit codes of ``python -m edgepipe.runtime.encoder_bench`` (the bundle's own: usage, bad input).
EXIT_SHAPE, EXIT_LOAD = 2, 4
DEFAULT_SEQ_LEN = 128
# Real words, so the token ids (and any data-dependent kernels) look like real input.
SAMPLE_TEXT = (
    "Turn on the kitchen lights and set the living room thermostat to twenty one degrees. "
    "Remind me to water the plants tomorrow morning, then play some quiet music in the study. "
    "Schalte bitte das Licht im Wohnzimmer aus. What is the weather like in Lisbon this weekend?"
)
# (done, total) timed rounds, across every shape.
Progress = Callable[[int, int], None]


class BenchError(Exception):
    """A benchmark that cannot run as asked; the message is one line for the user."""


class ShapeError(BenchError):
    """A batch size, sequence length or run count that does not fit this model."""


class LoadError(BenchError):
    """onnxruntime cannot load a model file."""


@dataclass(frozen=True)
class BenchSettings:
    """What to measure and how long; None means the default named in the comment."""

    batch_sizes: tuple[int, ...] = (1,)
    seq_lens: tuple[int, ...] | None = None  # DEFAULT_SEQ_LEN, or the model's maximum if shorter
    runs: int = 30
    warmup: int = 5
    threads: int | None = None  # the target's intra-op threads, capped at this machine's cores
    max_seconds: float | None = None


def parse_sizes(text: str, what: str) -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``: positive integers, comma-separated, duplicates dropped."""
    try:
        sizes = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise ShapeError(f"{what} must be comma-separated integers, like 1,8 (got {text!r})") from None
    if not sizes or min(sizes) < 1:
        raise ShapeError(f"{what} must be positive integers, like 1,8 (got {text!r})")
    return sizes


def _check(settings: BenchSettings, seq_lens: Sequence[int], max_length: int) -> None:
    too_long = [s for s in seq_lens if s > max_length]
    if too_long:
        raise ShapeError(f"sequence length {too_long[0]} is over the model's maximum of {max_length} tokens")
    if settings.runs < 1 or settings.warmup < 0:
        raise ShapeError("runs must be at least 1 and warmup at least 0")
    if settings.threads is not None and settings.threads < 1:
        raise ShapeError("threads must be at least 1")
    if settings.max_seconds is not None and settings.max_seconds <= 0:
        raise ShapeError("max seconds must be more than 0")


def _load(path: Path, threads: int, runtime: EmbeddingConfig, spin: bool) -> tuple[ort.InferenceSession, float]:
    """The session with the target's settings, and how long creating it took (ms)."""
    start = time.perf_counter()
    try:
        session = open_session(path, threads, runtime.inter_op_threads, runtime.providers, spin)
    # onnxruntime raises its own exception types (InvalidProtobuf, NoSuchFile, Fail, ...).
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LoadError(f"{path}: onnxruntime cannot load this model: {reason}") from None
    return session, round((time.perf_counter() - start) * 1000, 3)


def _across_shapes(progress: Progress | None, offset: int, total: int) -> Callable[[int], None] | None:
    """One shape's progress (timed rounds done) as progress across every shape."""
    if progress is None:
        return None
    return lambda done: progress(offset + done, total)


def shape_result(batch_size: int, seq_len: int, times: dict[str, list[float]], runs: int) -> dict[str, Any]:
    """One shape's statistics from its recorded timings (ms) of "model" and, if there, "fp32"."""
    model = timing.summarize(times["model"], batch_size)
    fp32 = timing.summarize(times["fp32"], batch_size) if "fp32" in times else None
    return {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "complete": all(len(ms) >= runs for ms in times.values()),
        "model": model,
        "fp32": fp32,
        "speedup_vs_fp32": timing.speedup(fp32, model),
    }


def measure(
    models: dict[str, tuple[str, Path]],
    tokenizer: Path,
    runtime: EmbeddingConfig,
    settings: BenchSettings,
    *,
    measured_on: str,
    target: dict[str, Any],
    task: str = "embedding",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Benchmark ``models["model"]`` (and ``models["fp32"]``, interleaved, if given) per shape.

    ``models`` maps "model"/"fp32" to (the path to show, the file). Returns the SCHEMA document.
    """
    # Encoders only: text generation is measured by generation_bench.
    if task not in ENCODER_TASKS:
        raise BenchError(f"bench does not measure {task} models here")
    seq_lens = settings.seq_lens or (min(DEFAULT_SEQ_LEN, runtime.max_length),)
    _check(settings, seq_lens, runtime.max_length)
    threads = settings.threads or host_threads(runtime.intra_op_threads)
    sessions, described = {}, {}
    for name, (shown, path) in models.items():
        # Alone, a session keeps onnxruntime's default (spinning, as on the device); timed in
        # alternation with a baseline, neither spins, so neither steals the other's cores.
        sessions[name], load_ms = _load(path, threads, runtime, spin=len(models) == 1)
        described[name] = {
            "path": shown,
            "size_bytes": os.path.getsize(path),
            "sha256": sha256_file(path),
            "load_ms": load_ms,
        }
    tok = Tokenizer.from_file(str(tokenizer))
    tok.no_truncation()
    sample = np.asarray(tok.encode(SAMPLE_TEXT).ids, dtype=np.int64)
    shapes = [(b, s) for b in settings.batch_sizes for s in seq_lens]
    budget = settings.max_seconds / len(shapes) if settings.max_seconds else None
    total, results = settings.runs * len(shapes), []
    for index, (batch, seq) in enumerate(shapes):
        ids = np.tile(np.resize(sample, seq), (batch, 1))
        feeds = {
            name: encoder_feeds([i.name for i in s.get_inputs()], ids, np.ones_like(ids))
            for name, s in sessions.items()
        }
        calls = {name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()}
        if index == 0:
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                described[name]["first_inference_ms"] = round((time.perf_counter() - start) * 1000, 3)
        shape_progress = _across_shapes(progress, index * settings.runs, total)
        times = timing.interleaved(calls, settings.runs, settings.warmup, budget, shape_progress)
        results.append(shape_result(batch, seq, times, settings.runs))
    machine = timing.host_info()
    return {
        "schema": SCHEMA,
        "task": task,
        "measured_on": measured_on,
        "machine": machine,
        "target": target,
        "machine_matches_target_arch": arch(str(machine["machine"])) == arch(str(target.get("arch", ""))),
        "onnxruntime": ort.__version__,
        "provider": sessions["model"].get_providers()[0],
        "threads": threads,
        "target_threads": runtime.intra_op_threads,
        "inter_op_threads": runtime.inter_op_threads,
        "thread_spinning": len(models) == 1,
        "runs": settings.runs,
        "warmup": settings.warmup,
        "max_seconds": settings.max_seconds,
        "complete": all(r["complete"] for r in results),
        "models": {"model": described["model"], "fp32": described.get("fp32")},
        "peak_rss_mb": timing.peak_rss_mb(),
        "results": results,
    }


def request(
    models: dict[str, tuple[str, Path]],
    tokenizer: Path,
    runtime: EmbeddingConfig,
    settings: BenchSettings,
    *,
    measured_on: str,
    target: dict[str, Any],
    task: str = "embedding",
) -> dict[str, Any]:
    """``measure``'s arguments as JSON, for a process of its own (see run_request, main)."""
    return {
        "models": {name: [shown, str(path)] for name, (shown, path) in models.items()},
        "tokenizer": str(tokenizer),
        "runtime": runtime.to_json(),
        "settings": asdict(settings),
        "measured_on": measured_on,
        "target": target,
        "task": task,
    }


def bundle_request(
    root: Path,
    settings: BenchSettings,
    *,
    measured_on: str,
    baseline: Path | None = None,
    baseline_shown: str | None = None,
) -> dict[str, Any]:
    """What to measure for a bundle's model with its runtime.json settings, beside ``baseline``."""
    manifest = read_manifest(root)
    target = manifest.get("target", {})
    models = {"model": ("model/model.onnx", root / "model" / "model.onnx")}
    if baseline is not None:
        models["fp32"] = (baseline_shown or str(baseline), baseline)
    task = manifest.get("task", Task.EMBEDDING.manifest_name)
    runtime = (
        ScoringConfig.load(root / RUNTIME_CONFIG).session_settings()
        if Task.parse(task).is_head
        else EmbeddingConfig.load(root / RUNTIME_CONFIG)
    )
    return request(
        models,
        root / "tokenizer" / "tokenizer.json",
        runtime,
        settings,
        measured_on=measured_on,
        target={"name": target.get("name"), "arch": target.get("platform", {}).get("arch")},
        task=task,
    )


def run_request(request: dict[str, Any], progress: Progress | None = None) -> dict[str, Any]:
    """``measure`` from a JSON-able request (see bundle_request), as a child process gets it."""
    settings: dict[str, Any] = request["settings"]
    lists = {k: tuple(v) for k, v in settings.items() if isinstance(v, list)}
    return measure(
        {name: (shown, Path(path)) for name, (shown, path) in request["models"].items()},
        Path(request["tokenizer"]),
        EmbeddingConfig.from_json(request["runtime"]),
        BenchSettings(**{**settings, **lists}),
        measured_on=request["measured_on"],
        target=request["target"],
        task=request["task"],
        progress=progress,
    )


def incomplete_message(result: dict[str, Any]) -> str | None:
    """One line saying which shapes ran out of time before ``runs``; None when all completed."""
    short = [r for r in result["results"] if not r["complete"]]
    if not short:
        return None
    done = ", ".join(f"batch {r['batch_size']} x {r['seq_len']}: {r['model']['runs']}" for r in short)
    return (
        f"could not meet --runs {result['runs']} within --max-seconds {result['max_seconds']} "
        f"(timed runs done: {done}); these statistics rest on fewer runs"
    )


def main() -> int:
    """``python -m edgepipe.runtime.encoder_bench < request.json``: a benchmark in a process of its own.

    The build host measures this way so that nothing the build loaded (torch, its threads, its
    memory) is in the process being measured, just as on the device. Progress goes to stderr as
    ``progress DONE TOTAL`` lines, the result to stdout, an error as one ``error:`` line.
    """
    import json
    import sys

    def progress(done: int, total: int) -> None:
        print(f"progress {done} {total}", file=sys.stderr, flush=True)

    try:
        result = run_request(json.load(sys.stdin), progress)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_LOAD if isinstance(exc, LoadError) else EXIT_SHAPE
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
