"""Runs the stages for a BuildSpec: work dir, manifest, guard, atomic publish."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from . import __version__, sources
from .cache import StageCache, cache_key
from .config import Profile, Target, check_fits
from .errors import GuardError, ResourceError, VerifyError
from .runtime.bench import host_info
from .runtime.embedder import EmbeddingConfig
from .runtime.integrity import read_manifest, verify_dir
from .stages import bench, bundle, evaluate, export, quantize
from .tasks import embedding

STAGES = ("export", "quantize", "evaluate", "bench", "bundle")
VERSIONED = (
    "onnx", "onnxruntime", "optimum", "optimum-onnx", "transformers", "torch", "tokenizers", "numpy"
)  # fmt: skip


@dataclass(frozen=True)
class BuildSpec:
    """Everything one build depends on."""

    target: Target
    profile: Profile
    out: Path
    model: str | None = None
    name: str | None = None
    work_dir: Path | None = None
    eval_data: Path | None = None
    bench_runs: int = 30
    cache: StageCache | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass
class BuildResult:
    bundle_dir: Path
    archive: Path
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)


# Called with (stage name, None) when a stage starts and (stage name, one-line summary) when done.
Progress = Callable[[str, str | None], None]


def versions() -> dict[str, str]:
    found = {"edgepipe": __version__, "python": platform.python_version()}
    for dist in VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    return found


@contextlib.contextmanager
def output_lock(out: Path, name: str) -> Iterator[None]:
    """One build at a time per bundle name in ``out``; a second one fails at once, not corrupts."""
    lock_path = out / f".{name}.lock"
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResourceError(
                f"{out / name}: another edgepipe build is writing this bundle; wait for it to finish"
            ) from None
        yield


@contextlib.contextmanager
def disk_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ResourceError(
                f"no space left on the device writing {exc.filename or 'the build'}; free some "
                "space (or use --out/--work-dir on another disk) and build again"
            ) from exc
        raise


def publish(staging: Path, out: Path, name: str) -> None:
    """Swap the new bundle dir (and archive, if staged) in by rename: old or new, never half."""
    final_dir, final_archive = out / name, out / f"{name}.tar.gz"
    if final_dir.exists():
        final_dir.rename(staging / "previous")
    (staging / name).rename(final_dir)
    if (staging / final_archive.name).exists():
        os.replace(staging / final_archive.name, final_archive)


def _texts(spec: BuildSpec) -> list[str]:
    return embedding.load_texts(spec.eval_data) if spec.eval_data else embedding.builtin_texts()


def build(spec: BuildSpec, progress: Progress | None = None) -> BuildResult:
    """Run every stage and publish ``<out>/<model>-<target>/`` and its ``.tar.gz``."""
    report = progress or (lambda stage, summary: None)
    source = sources.resolve(spec.model, spec.name, spec.allow_pickle, spec.trust_remote_code)
    check_fits(spec.target, spec.profile, source.task)
    texts = _texts(spec)
    name = f"{source.name}-{spec.target.name}"
    spec.out.mkdir(parents=True, exist_ok=True)
    with disk_errors(), output_lock(spec.out, name):
        for stale in spec.out.glob(f".{name}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=spec.out))
        try:
            work = spec.work_dir or staging / "work"
            result = _run_stages(spec, source, texts, name, work, staging, report)
            publish(staging, spec.out, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    result.bundle_dir = spec.out / name
    result.archive = spec.out / f"{name}.tar.gz"
    return result


def _stage_dir(work: Path, stage: str) -> Path:
    path = work / stage
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass
class StageRunner:
    """Runs one stage into ``work/<stage>``, or copies it from the cache when the key matches."""

    work: Path
    cache: StageCache | None
    report: Progress
    tool_versions: dict[str, str]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)

    def __call__(
        self,
        name: str,
        config: BaseModel,
        inputs: dict[str, str],
        fn: Callable[[Path], dict[str, Any]],
    ) -> dict[str, Any]:
        self.report(name, None)
        start = time.perf_counter()
        dest = _stage_dir(self.work, name)
        config_json = config.model_dump(mode="json")
        key = cache_key(name, config_json, inputs, self.tool_versions)
        lookup = self.cache.get(name, key, dest) if self.cache else None
        if lookup is not None and lookup.record is not None:
            record = lookup.record
            self.cached.append(name)
        else:
            record = fn(dest)
            if self.cache:
                self.cache.put(name, key, dest, record)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        self.records[name] = {"config": config_json, "inputs": inputs, **record}
        return record

    def summary(self, name: str, text: str) -> None:
        self.report(name, f"{text} (cached)" if name in self.cached else text)


def _run_stages(
    spec: BuildSpec,
    source: sources.ModelSource,
    texts: list[str],
    name: str,
    work: Path,
    staging: Path,
    report: Progress,
) -> BuildResult:
    target, profile = spec.target, spec.profile
    tool_versions = {k: v for k, v in versions().items() if k != "python"}
    stage = StageRunner(work, spec.cache, report, tool_versions)

    export_cfg = export.ExportConfig(trust_remote_code=source.trust_remote_code)
    exported = stage(
        "export",
        export_cfg,
        {"source": source.digest},
        lambda d: export.run(export_cfg, source.path, d),
    )
    fp32_model, tokenizer_dir = work / "export" / "model.onnx", work / "export" / "tokenizer"
    stage.summary("export", f"fp32 ONNX {fp32_model.stat().st_size / 1e6:.1f} MB")
    digests = {
        "fp32": exported["outputs"]["model.onnx"],
        "tokenizer": exported["outputs"]["tokenizer/tokenizer.json"],
    }

    quant_cfg = quantize.QuantizeConfig.from_profile(profile)
    quantized = stage(
        "quantize",
        quant_cfg,
        {"fp32": digests["fp32"]},
        lambda d: quantize.run(quant_cfg, fp32_model, d),
    )
    model = work / "quantize" / "model.onnx"
    digests["model"] = quantized["outputs"]["model.onnx"]
    size_mb = quantized["size_bytes"] / 1e6
    stage.summary("quantize", f"{profile.method} {size_mb:.1f} MB")

    pooled = _has_output(fp32_model, "sentence_embedding")
    runtime = EmbeddingConfig(
        max_length=exported["max_length"],
        output="sentence_embedding" if pooled else "last_hidden_state",
        pooling="model" if pooled else "mean",
        intra_op_threads=target.runtime.intra_op_threads,
        inter_op_threads=target.runtime.inter_op_threads,
        providers=tuple(target.runtime.execution_providers),
    )
    tokenizer = tokenizer_dir / "tokenizer.json"
    eval_cfg = evaluate.EvaluateConfig(
        bar=profile.accuracy.min,
        texts_digest=hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        runtime=runtime.to_json(),
    )
    evaluated = stage(
        "evaluate",
        eval_cfg,
        {"source": source.digest, **digests},
        lambda d: evaluate.run(
            eval_cfg, source.path, fp32_model, model, tokenizer, runtime, texts, d
        ),
    )
    score = evaluated["model"]
    stage.summary("evaluate", f"min cosine {score['min']:.4f} (bar {profile.accuracy.min})")
    if not evaluated["passed"]:
        raise GuardError(
            f"profile '{profile.name}' reached min cosine {score['min']:.4f} on "
            f"{score['worst_text']!r}, below its bar {profile.accuracy.min}; try another profile "
            "(`edgepipe profiles`) or --profile fp32"
        )
    if size_mb > target.budgets.model_size_mb:
        raise GuardError(
            f"model is {size_mb:.1f} MB, over target '{target.name}' budget of "
            f"{target.budgets.model_size_mb} MB; choose a smaller profile or model"
        )

    bench_cfg = bench.BenchConfig(
        runs=spec.bench_runs,
        threads=target.runtime.intra_op_threads,
        target={"name": target.name, "arch": target.platform.arch},
        host=host_info(),
    )
    measured = stage(
        "bench",
        bench_cfg,
        digests,
        lambda d: bench.run(bench_cfg, fp32_model, model, tokenizer, runtime, d),
    )
    (shape,) = measured["results"]
    stage.summary(
        "bench", f"p50 {shape['model']['p50_ms']} ms, {shape['speedup_vs_fp32']}x fp32 (host)"
    )

    report("bundle", None)
    start = time.perf_counter()
    dest = staging / name
    bundle.assemble(dest, model, tokenizer_dir, runtime, target)
    manifest = bundle.finish(
        dest,
        {
            "schema": "edgepipe.bundle/1",
            "name": name,
            "task": source.task,
            "model": {
                "path": "model/model.onnx",
                "sha256": quantized["outputs"]["model.onnx"],
                "size_bytes": quantized["size_bytes"],
                "source": source.describe(),
            },
            "target": target.model_dump(mode="json"),
            "profile": profile.model_dump(mode="json"),
            "versions": versions(),
            "accuracy": {k: v for k, v in evaluated.items() if k != "outputs"},
            "bench": {k: v for k, v in measured.items() if k != "outputs"},
            "stages": stage.records,
        },
    )
    bundle.write_archive(dest, staging / f"{name}.tar.gz")
    stage.seconds["bundle"] = round(time.perf_counter() - start, 2)
    report("bundle", f"{name} ({len(manifest['files'])} files)")
    return BuildResult(dest, staging / f"{name}.tar.gz", manifest, stage.seconds, stage.cached)


def _has_output(model: Path, name: str) -> bool:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return any(o.name == name for o in graph.output)


def _link_or_copy(src: str, dst: str) -> None:
    # Unchanged files are hard links: no copy of a large model, and the old dir is never touched.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def record_bench(root: Path, result: dict[str, Any]) -> bool:
    """Write ``result`` into the bundle's manifest and documents, swapped in atomically.

    The archive beside the bundle is rewritten too, if there is one; returns whether there was.
    A bundle that no longer matches its manifest is refused, never re-hashed into looking whole.
    """
    root = root.resolve()
    out, name = root.parent, root.name
    with disk_errors(), output_lock(out, name):
        manifest = read_manifest(root)
        problems = verify_dir(root)
        if problems:
            raise VerifyError(
                f"{root}: does not match its manifest ({problems[0]}); rebuild it before "
                "recording a benchmark in it"
            )
        if manifest["model"]["sha256"] != result["models"]["model"]["sha256"]:
            raise ResourceError(f"{root}: the bundle's model changed while it was benchmarked")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=out))
        try:
            new = staging / name
            shutil.copytree(
                root,
                new,
                copy_function=_link_or_copy,
                ignore=lambda d, names: [
                    n
                    for n in names
                    if n == "__pycache__" or (Path(d) == root and n in bundle.DOCUMENTS)
                ],
            )
            manifest = {k: v for k, v in manifest.items() if k != "files"}
            bundle.finish(new, {**manifest, "bench": result})
            archived = (out / f"{name}.tar.gz").is_file()
            if archived:
                bundle.write_archive(new, staging / f"{name}.tar.gz")
            publish(staging, out, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return archived
