"""The stage runner: one stage into ``work/<label>``, or its files from the cache."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from .. import __version__
from ..cache import StageCache, cache_key
from ..catalog.config import Target
from ..graph import external
from ..runtime.integrity import sha256_file
from ..runtime.timing import host_info
from ..stages import wheels
from .spec import BuildSpec, Progress

VERSIONED = (
    "onnx",
    "onnxruntime",
    "optimum",
    "optimum-onnx",
    "transformers",
    "torch",
    "tokenizers",
    "numpy",
    "jinja2",
)


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
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".txt") and p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


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

    def ranked_nodes(self, label: str) -> list[str]:
        """The weight MatMuls of a sensitivity stage's ``ranking.json``, most damaging first
        (reported in the stage's summary line)."""
        ranking = json.loads((self.work / label / "ranking.json").read_text())
        worst = ranking[0]["node"] if ranking else "none"
        self.summary(label, f"{len(ranking)} MatMuls ranked, worst {worst}")
        return [str(r["node"]) for r in ranking]

    def quantize(
        self,
        label: str,
        method: str,
        config: BaseModel,
        inputs: dict[str, str],
        fn: Callable[[Path], dict[str, Any]],
    ) -> tuple[Path, dict[str, Any]]:
        """The quantize stage of the attempt ``label``: its model file and its record."""
        quantized = self("quantize", config, inputs, fn, label=f"quantize/{label}")
        self.summary(f"quantize/{label}", f"{method} {quantized['size_bytes'] / 1e6:.1f} MB")
        return self.work / f"quantize/{label}" / "model.onnx", quantized

    def bench(
        self,
        label: str,
        config: BaseModel,
        digests: dict[str, str],
        fn: Callable[[Path], dict[str, Any]],
    ) -> dict[str, Any]:
        """The bench stage of the attempt ``label``: keyed by its quantized model's digest."""
        model = external.digest(self.records[f"quantize/{label}"]["outputs"], "model.onnx")
        return self("bench", config, {**digests, "model": model}, fn, label=f"bench/{label}")

    def latency(
        self,
        attempt: Any,
        config: BaseModel,
        digests: dict[str, str],
        fn: Callable[[Path], dict[str, Any]],
    ) -> dict[str, Any]:
        """An encoder attempt's latency bench (one shape): run, summarised, kept on ``attempt``."""
        measured = self.bench(attempt.label, config, digests, fn)
        (shape,) = measured["results"]
        self.summary(
            f"bench/{attempt.label}",
            f"p50 {shape['model']['p50_ms']} ms, {shape['speedup_vs_fp32']}x fp32 (host)",
        )
        attempt.bench = {k: v for k, v in measured.items() if k != "outputs"}
        return dict(attempt.bench)


def bench_labels(target: Target) -> dict[str, Any]:
    """A bench config's threads and labels: the target's threads, name and arch, and this host."""
    return {
        "threads": target.runtime.intra_op_threads,
        "target": {"name": target.name, "arch": target.platform.arch},
        "host": host_info(),
    }


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
