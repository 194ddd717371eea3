"""Runs the stages for a BuildSpec: work dir, manifest, guard, atomic publish."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
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

from . import __version__, sbom, signing, sources
from .cache import StageCache, cache_key
from .config import Profile, Target, check_fits
from .errors import ConfigError, GuardError, ResourceError, VerifyError
from .onnx_checks import check_external_data, check_runtime_support
from .recipes import Attempt, Recipes
from .runtime.bench import host_info
from .runtime.embedder import EmbeddingConfig
from .runtime.generator import GenerationConfig
from .runtime.integrity import SIGNATURE, read_manifest, sha256_file, verify_dir
from .stages import bench, bundle, export, quantize, reference, wheels
from .tasks import embedding

STAGES = ("wheels", "export", "quantize", "evaluate", "bench", "bundle")
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
    # Tried after ``profile`` when it misses its bar (its fallbacks), or beside it with ``search``.
    candidates: tuple[Profile, ...] = ()
    search: bool = False
    # Off: no host timing, so two builds of the same inputs give the same bytes even from scratch.
    bench: bool = True
    calibration_data: Path | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    with_wheels: bool = False
    runtime_version: str | None = None
    # The bundle is signed with it (model.sig) before it is archived.
    sign_with: signing.SigningKey | None = None


@dataclass
class BuildResult:
    bundle_dir: Path
    archive: Path
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)


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


@functools.cache
def code_digest() -> str:
    """sha256 of edgepipe's own code and data: a change to them is a new cache key, whatever the
    version number says."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".txt") and p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


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
    """The evaluation texts: --eval-data, or the built-in set (for decoders too: short commands,
    long paragraphs, several languages and code are as telling for next tokens as for embeddings)."""
    return embedding.load_texts(spec.eval_data) if spec.eval_data else embedding.builtin_texts()


def build(spec: BuildSpec, progress: Progress | None = None) -> BuildResult:
    """Run every stage and publish ``<out>/<model>-<target>/`` and its ``.tar.gz``."""
    report = progress or (lambda stage, summary: None)
    source = sources.resolve(spec.model, spec.name, spec.allow_pickle, spec.trust_remote_code)
    check_fits(spec.target, spec.profile, source.task)
    if spec.with_wheels and bundle.gpu_target(spec.target):
        raise ConfigError(
            f"target '{spec.target.name}' runs NVIDIA's onnxruntime-gpu, which is not on PyPI; "
            "build without --with-wheels and install NVIDIA's wheel on the device"
        )
    if spec.sign_with is not None:
        spec.sign_with.check()  # a bad key should fail now, not after the build
    evaluated = versions()
    specs = bundle.runtime_requirements(spec.target, evaluated, spec.runtime_version)
    texts = _texts(spec)
    name = f"{source.name}-{spec.target.name}"
    spec.out.mkdir(parents=True, exist_ok=True)
    with disk_errors(), output_lock(spec.out, name):
        for stale in spec.out.glob(f".{name}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=spec.out))
        try:
            work = spec.work_dir or staging / "work"
            requirements_txt = bundle.requirements(spec.target, specs, evaluated)
            run_stages = _run_stages
            if source.task_kind == "generation":
                from .pipeline_generation import run_generation_stages as run_stages
            result = run_stages(
                spec, source, texts, name, work, staging, report, specs, requirements_txt
            )
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
    """Runs one stage into ``work/<label>``, or copies it from the cache when the key matches."""

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
        label: str | None = None,
    ) -> dict[str, Any]:
        label = label or name
        self.report(label, None)
        start = time.perf_counter()
        dest = _stage_dir(self.work, label)
        config_json = config.model_dump(mode="json")
        key = cache_key(name, config_json, inputs, self.tool_versions)
        lookup = self.cache.get(name, key, dest) if self.cache else None
        if lookup is not None and lookup.record is not None:
            record = lookup.record
            self.cached.append(label)
        else:
            record = fn(dest)
            if self.cache:
                self.cache.put(name, key, dest, record)
        self.seconds[label] = round(time.perf_counter() - start, 2)
        self.records[label] = {"config": config_json, "inputs": inputs, **record}
        return record

    def summary(self, label: str, text: str) -> None:
        self.report(label, f"{text} (cached)" if label in self.cached else text)


def attempts_table(attempts: list[Attempt]) -> list[dict[str, Any]]:
    return [a.row() for a in attempts]


def _fitting(spec: BuildSpec, task: str) -> list[Profile]:
    """The profile first, then its fallbacks (all must fit) or, with --search, every fitting one."""
    check_fits(spec.target, spec.profile, task)
    found = [spec.profile]
    for candidate in spec.candidates:
        try:
            check_fits(spec.target, candidate, task)
        except ConfigError:
            if not spec.search:
                raise
            continue
        if candidate.name not in {p.name for p in found}:
            found.append(candidate)
    return found


def new_stage_runner(spec: BuildSpec, work: Path, report: Progress) -> StageRunner:
    tool_versions = {k: v for k, v in versions().items() if k != "python"}
    tool_versions["edgepipe"] += f"+{code_digest()[:16]}"
    return StageRunner(work, spec.cache, report, tool_versions)


def run_wheels(
    spec: BuildSpec, stage: StageRunner, work: Path, requirements_txt: str
) -> tuple[Path | None, dict[str, Any] | None]:
    """With --with-wheels: the wheels stage (first: a failed download should cost seconds)."""
    if not spec.with_wheels:
        return None, None
    target = spec.target
    wheels_cfg = wheels.WheelsConfig(
        requirements=requirements_txt,
        platforms=wheels.platform_tags(target.platform.wheel_platform),
        python=target.platform.python,
        pip=wheels.pip_version(),
    )
    downloaded = stage("wheels", wheels_cfg, {}, lambda d: wheels.run(wheels_cfg, d))
    stage.summary("wheels", f"{len(downloaded['wheels'])} wheels for {wheels_cfg.platforms[0]}")
    return work / "wheels" / wheels.DIR, downloaded


def _run_stages(
    spec: BuildSpec,
    source: sources.ModelSource,
    texts: list[str],
    name: str,
    work: Path,
    staging: Path,
    report: Progress,
    specs: dict[str, str],
    requirements_txt: str,
) -> BuildResult:
    target = spec.target
    profiles = _fitting(spec, source.task)
    stage = new_stage_runner(spec, work, report)

    wheel_dir, downloaded = run_wheels(spec, stage, work, requirements_txt)

    export_cfg = export.ExportConfig(trust_remote_code=source.trust_remote_code)
    exported = stage(
        "export",
        export_cfg,
        {"source": source.digest},
        lambda d: export.run(export_cfg, source.path, d),
    )
    fp32_model, tokenizer_dir = work / "export" / "model.onnx", work / "export" / "tokenizer"
    tokenizer = tokenizer_dir / "tokenizer.json"
    check_runtime_support(fp32_model, target)
    stage.summary("export", f"fp32 ONNX {fp32_model.stat().st_size / 1e6:.1f} MB")
    digests = {
        "fp32": exported["outputs"]["model.onnx"],
        "tokenizer": exported["outputs"]["tokenizer/tokenizer.json"],
    }
    pooled = _has_output(fp32_model, "sentence_embedding")
    runtime = EmbeddingConfig(
        max_length=exported["max_length"],
        output="sentence_embedding" if pooled else "last_hidden_state",
        pooling="model" if pooled else "mean",
        intra_op_threads=target.runtime.intra_op_threads,
        inter_op_threads=target.runtime.inter_op_threads,
        providers=tuple(target.runtime.execution_providers),
    )
    texts_digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()

    ref_cfg = reference.ReferenceConfig(texts_digest=texts_digest, runtime=runtime.to_json())
    referenced = stage(
        "reference",
        ref_cfg,
        {"source": source.digest, **digests},
        lambda d: reference.run(source.path, fp32_model, tokenizer, runtime, texts, d),
    )
    digests["reference"] = referenced["outputs"]["reference.npy"]
    stage.summary(
        "reference", f"fp32 ONNX vs PyTorch min cosine {referenced['fp32_onnx']['min']:.6f}"
    )

    calibration_texts = (
        embedding.load_texts(spec.calibration_data)
        if spec.calibration_data
        else embedding.builtin_calibration_texts()
    )
    recipes = Recipes(
        stage=stage,
        work=work,
        target=target,
        fp32_model=fp32_model,
        reference=work / "reference" / "reference.npy",
        tokenizer=tokenizer,
        runtime=runtime,
        texts=texts,
        texts_digest=texts_digest,
        digests=digests,
        calibration=quantize.CalibrationData(calibration_texts, tokenizer, runtime.max_length),
        summary=stage.summary,
    )
    results: list[Attempt] = []  # per profile: the attempt it ends with
    for profile in profiles:
        tried = recipes.with_mixed_precision(profile)
        results.append(tried)
        score = tried.accuracy["model"]
        stage.summary(
            f"evaluate/{tried.label}",
            f"{tried.size_bytes / 1e6:.1f} MB, min cosine {score['min']:.4f} "
            f"(bar {profile.bar('embedding').min}){'' if tried.passed else ': ' + str(tried.problem)}",
        )
        if tried.passed and not spec.search:
            break
    passing = [a for a in results if a.passed]
    if not passing:
        raise GuardError(
            f"no recipe met its bar and the target's budgets ({len(recipes.attempts)} tried, best "
            f"min cosine {max(a.accuracy['model']['min'] for a in recipes.attempts)}); "
            "see the table above, lower the bar in a profile of your own, or use --profile fp32",
            details=attempts_table(recipes.attempts),
        )

    def measure(attempt: Attempt) -> dict[str, Any]:
        bench_cfg = bench.BenchConfig(
            runs=spec.bench_runs,
            threads=target.runtime.intra_op_threads,
            target={"name": target.name, "arch": target.platform.arch},
            host=host_info(),
        )
        inputs = {
            **digests,
            "model": stage.records[f"quantize/{attempt.label}"]["outputs"]["model.onnx"],
        }
        measured = stage(
            "bench",
            bench_cfg,
            inputs,
            lambda d: bench.run(bench_cfg, fp32_model, attempt.model, tokenizer, runtime, d),
            label=f"bench/{attempt.label}",
        )
        (shape,) = measured["results"]
        stage.summary(
            f"bench/{attempt.label}",
            f"p50 {shape['model']['p50_ms']} ms, {shape['speedup_vs_fp32']}x fp32 (host)",
        )
        attempt.bench = {k: v for k, v in measured.items() if k != "outputs"}
        return attempt.bench

    chosen = choose(spec, passing, measure, cost=lambda a: a.p50_ms or float("inf"))
    return write_bundle(
        spec, stage, report, chosen, recipes.attempts,
        name=name, staging=staging, source=source, profiles=profiles, runtime=runtime,
        tokenizer_dir=tokenizer_dir, requirements_txt=requirements_txt, specs=specs,
        wheel_dir=wheel_dir, downloaded=downloaded, fp32_onnx=referenced["fp32_onnx"],
    )  # fmt: skip


def choose(
    spec: BuildSpec,
    passing: list[Attempt],
    measure: Callable[[Attempt], object],
    cost: Callable[[Attempt], float],
) -> Attempt:
    """The first passing attempt, benchmarked unless --no-bench; with --search, every passing one
    benchmarked and the one of least ``cost`` (the first of equals) kept."""
    if spec.search and not spec.bench:
        raise ConfigError(
            "--search picks the fastest recipe, so it needs the bench stage: drop --no-bench"
        )
    if spec.search:
        for attempt in passing:
            measure(attempt)
        return min(passing, key=cost)
    if spec.bench:
        measure(passing[0])
    return passing[0]


# The manifest's "stages": each record key of the chosen attempt's stages, where the build ran it.
def _chosen_records(stage: StageRunner, chosen: Attempt) -> dict[str, dict[str, Any]]:
    keys = (
        ("export", "export"), ("reference", "reference"),
        ("quantize", f"quantize/{chosen.label}"), ("evaluate", f"evaluate/{chosen.label}"),
        ("bench", f"bench/{chosen.label}"), ("wheels", "wheels"),
        ("sensitivity", f"sensitivity/{chosen.profile}"),
    )  # fmt: skip
    return {label: stage.records[key] for label, key in keys if key in stage.records}


def write_bundle(
    spec: BuildSpec,
    stage: StageRunner,
    report: Progress,
    chosen: Attempt,
    attempts: list[Attempt],
    *,
    name: str,
    staging: Path,
    source: sources.ModelSource,
    profiles: list[Profile],
    runtime: EmbeddingConfig | GenerationConfig,
    tokenizer_dir: Path,
    requirements_txt: str,
    specs: dict[str, str],
    wheel_dir: Path | None,
    downloaded: dict[str, Any] | None,
    fp32_onnx: dict[str, Any],
) -> BuildResult:
    """The bundle of the chosen attempt in ``staging/name``, its manifest and its archive."""
    target = spec.target
    check_external_data(chosen.model)
    check_runtime_support(chosen.model, target)
    report("bundle", None)
    start = time.perf_counter()
    dest = staging / name
    bundle.assemble(dest, chosen.model, tokenizer_dir, runtime, requirements_txt, wheel_dir)
    records = _chosen_records(stage, chosen)
    chosen_profile = next(p for p in profiles if p.name == chosen.profile)
    table = attempts_table(attempts)
    document = {
        "schema": "edgepipe.bundle/1",
        "name": name,
        "task": source.task,
        "model": {
            "path": "model/model.onnx",
            "sha256": records["quantize"]["outputs"]["model.onnx"],
            "size_bytes": chosen.size_bytes,
            "kept_float": chosen.kept_float,
            "source": source.describe(),
        },
        "target": target.model_dump(mode="json"),
        "profile": chosen_profile.model_dump(mode="json"),
        "versions": versions(),
        "requirements": specs,
        **({"wheels": _wheels_entry(downloaded, target)} if downloaded else {}),
        "accuracy": {**chosen.accuracy, "fp32_onnx": fp32_onnx},
        "bench": chosen.bench,
        "attempts": table,
        "stages": records,
    }
    sbom.write(dest, document, source.path)  # before finish(): the manifest covers the SBOM
    manifest = bundle.finish(dest, document)
    if spec.sign_with is not None:  # after finish(): the signature covers the manifest
        signing.sign_dir(dest, spec.sign_with)
    bundle.write_archive(dest, staging / f"{name}.tar.gz")
    stage.seconds["bundle"] = round(time.perf_counter() - start, 2)
    report("bundle", f"{name} ({len(manifest['files'])} files)")
    return BuildResult(
        dest, staging / f"{name}.tar.gz", manifest, stage.seconds, stage.cached, table
    )


def _wheels_entry(downloaded: dict[str, Any], target: Target) -> dict[str, Any]:
    return {
        "dir": wheels.DIR,
        "platforms": downloaded["platforms"],
        "python": target.platform.python,
        "files": downloaded["wheels"],
        "install": "pip install --no-index --find-links wheels -r requirements.txt",
    }


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


def rewrite_bundle(
    root: Path, edit: Callable[[Path, dict[str, Any]], None], drop: tuple[str, ...], doing: str
) -> bool:
    """Let ``edit(copy, manifest)`` change a copy of the bundle, then swap it in atomically.

    The copy hard-links the files (top-level ``drop`` left out); the archive beside the bundle is
    rewritten too, if there is one; returns whether there was. A bundle that no longer matches its
    manifest is refused (``doing``: what was asked), never re-hashed or signed into looking whole.
    """
    root = root.resolve()
    out, name = root.parent, root.name
    with disk_errors(), output_lock(out, name):
        manifest = read_manifest(root)
        problems = verify_dir(root)
        if problems:
            raise VerifyError(
                f"{root}: does not match its manifest ({problems[0]}); rebuild it before {doing}"
            )
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=out))
        try:
            new = staging / name
            shutil.copytree(
                root,
                new,
                copy_function=_link_or_copy,
                ignore=lambda d, names: [
                    n for n in names if n == "__pycache__" or (Path(d) == root and n in drop)
                ],
            )
            edit(new, manifest)
            archived = (out / f"{name}.tar.gz").is_file()
            if archived:
                bundle.write_archive(new, staging / f"{name}.tar.gz")
            publish(staging, out, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return archived


def record_bench(root: Path, result: dict[str, Any]) -> bool:
    """Write ``result`` into the bundle's manifest and documents (``rewrite_bundle``).

    A signature is left out: it signed the old manifest (`edgepipe sign` the bundle again).
    """

    def edit(new: Path, manifest: dict[str, Any]) -> None:
        if manifest["model"]["sha256"] != result["models"]["model"]["sha256"]:
            raise ResourceError(f"{root}: the bundle's model changed while it was benchmarked")
        manifest = {k: v for k, v in manifest.items() if k != "files"}
        bundle.finish(new, {**manifest, "bench": result})

    return rewrite_bundle(root, edit, (*bundle.DOCUMENTS, SIGNATURE), "recording a benchmark in it")
