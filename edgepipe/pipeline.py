"""build(): check the spec, lock the bundle name, stage, run the model's task, publish atomically."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from . import sources
from .catalog.config import check_fits
from .engine.publish import disk_errors, output_lock, publish
from .engine.runner import new_stage_runner, run_wheels, versions
from .engine.spec import BuildContext, BuildResult, BuildSpec, Progress, fitting
from .errors import ConfigError
from .runtime.tasks import Task
from .stages import bundle
from .tasks import TASKS
from .tasks.texts import builtin_texts, load_texts

__all__ = ["BuildResult", "BuildSpec", "Progress", "build"]


def _texts(spec: BuildSpec, kind: Task) -> list[str]:
    """The evaluation texts: --eval-data, or the task kind's built-in set."""
    if kind == "reranking":  # (query, document) pairs, which tasks/reranking.py reads
        return []
    return load_texts(spec.eval_data) if spec.eval_data else builtin_texts(kind)


def build(spec: BuildSpec, progress: Progress | None = None) -> BuildResult:
    """Run every stage and publish ``<out>/<model>-<target>/`` and its ``.tar.gz``."""
    report = progress or (lambda stage, summary: None)
    source = sources.resolve(spec.model, spec.name, spec.allow_pickle, spec.trust_remote_code, spec.task)
    check_fits(spec.target, spec.profile, source.task)
    if spec.with_wheels and bundle.gpu_target(spec.target):
        raise ConfigError(
            f"target '{spec.target.name}' runs NVIDIA's onnxruntime-gpu, which is not on PyPI; "
            "build without --with-wheels and install NVIDIA's wheel on the device"
        )
    if spec.sign_with is not None:
        spec.sign_with.check()  # a bad key should fail now, not after the build
    evaluated = versions()
    specs = bundle.runtime_requirements(spec.target, evaluated, spec.runtime_version, source.task)
    texts = _texts(spec, source.task)
    name = f"{source.name}-{spec.target.name}"
    spec.out.mkdir(parents=True, exist_ok=True)
    with disk_errors(), output_lock(spec.out, name):
        for stale in spec.out.glob(f".{name}.tmp*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=spec.out))
        try:
            work = spec.work_dir or staging / "work"
            requirements_txt = bundle.requirements(spec.target, specs, evaluated)
            profiles = fitting(spec, source.task)
            stage = new_stage_runner(spec, work, report)
            wheel_dir, downloaded = run_wheels(spec, stage, work, requirements_txt)
            ctx = BuildContext(
                spec,
                source,
                texts,
                name,
                work,
                staging,
                report,
                specs,
                requirements_txt,
                stage,
                profiles,
                wheel_dir,
                downloaded,
            )
            result = TASKS[source.task].run(ctx)
            publish(staging, spec.out, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    result.bundle_dir = spec.out / name
    result.archive = spec.out / f"{name}.tar.gz"
    return result
