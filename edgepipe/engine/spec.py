"""What a build is asked for (BuildSpec), what its task sees (BuildContext), what it gives back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache import StageCache, texts_digest
from ..catalog import Catalog
from ..catalog.config import LicencePolicy, Profile, Target, check_fits
from ..errors import ConfigError
from ..runtime.integrity import kept_matmuls
from ..runtime.tasks import Task

if TYPE_CHECKING:
    from ..sources import ModelSource
    from ..trust.signing import SigningKey
    from .runner import StageRunner

# Called with (stage name, None) when a stage starts and (stage name, one-line summary) when done.
Progress = Callable[[str, str | None], None]


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
    sign_with: SigningKey | None = None
    # --task: what to build the model for instead of what its config.json implies.
    task: Task | None = None
    # --license-policy FILE (else the target's license_policy), what it was read from, --accept-license.
    licence_policy: LicencePolicy | None = None
    licence_policy_source: str | None = None
    accept_licences: tuple[str, ...] = ()
    # --adapter: a PEFT LoRA directory or hub id merged into ``model`` before anything is built.
    adapter: str | None = None


def choose_profiles(
    target: Target,
    recipes: Catalog[Profile],
    model: str | None,
    profile: str | None,
    search: bool,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    task: Task | None = None,
    adapter: str | None = None,
) -> tuple[Profile, tuple[Profile, ...]]:
    """The profile to build with (``profile``, or the target's default for the model's task) and
    the candidates tried after it: its fallbacks, or every other profile with ``search``."""
    from ..sources import peek_kind, resolve

    if task is not None:
        resolve(model, None, allow_pickle, trust_remote_code, task, adapter)  # can the model do it?
    kind = peek_kind(model, task, adapter)
    if profile is None and kind is None:
        resolve(model, None, allow_pickle, trust_remote_code, None, adapter)  # says why the task is unknown
        raise ConfigError(
            f"{model}: cannot tell the model's task from its config.json, so there is no default "
            "profile for it; pass --profile (see `edgepipe profiles`)"
        )
    chosen = recipes.load(profile or target.profile_for(kind or Task.EMBEDDING))
    others = (
        [p for p in recipes.all() if p.name != chosen.name]
        if search
        else [recipes.load(name) for name in chosen.fallbacks]
    )
    return chosen, tuple(others)


def fitting(spec: BuildSpec, task: Task) -> list[Profile]:
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


@dataclass
class BuildContext:
    """What a task's build gets from pipeline.build(): the spec, the model, where to write, the
    stage runner (the wheels stage already run) and the profiles to try in order."""

    spec: BuildSpec
    source: ModelSource
    texts: list[str]
    name: str
    work: Path
    staging: Path
    report: Progress
    specs: dict[str, str]  # the runtime's requirements
    requirements_txt: str
    stage: StageRunner
    profiles: list[Profile]
    wheel_dir: Path | None = None
    downloaded: dict[str, Any] | None = None

    @property
    def texts_digest(self) -> str:
        return texts_digest(self.texts)


@dataclass
class BuildResult:
    bundle_dir: Path
    archive: Path
    manifest: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    bench_fields: dict[str, Any] = field(default_factory=dict)  # the task's bench numbers for CI
    example: str = ""  # a command that runs the bundle, after ``python <bundle>``
    signed: bool = False  # with a model.sig

    def summary(self) -> dict[str, Any]:
        """The build's JSON summary for CI (``edgepipe build --json``)."""
        manifest = self.manifest
        measured = manifest["bench"]
        return {
            "bundle_dir": str(self.bundle_dir),
            "archive": str(self.archive),
            "target": manifest["target"]["name"],
            "profile": manifest["profile"]["name"],
            "model_size_bytes": manifest["model"]["size_bytes"],
            "accuracy": manifest["accuracy"]["model"],
            "task": manifest["task"],
            **self.bench_fields,
            "latency_measured_on": measured["measured_on"] if measured else None,
            "kept_{}".format(*kept_matmuls(manifest)): kept_matmuls(manifest)[1],
            "attempts": self.attempts,
            "requirements": manifest["requirements"],
            "wheels": len(manifest.get("wheels", {}).get("files", [])),
            "signed": self.signed,
            "cached_stages": self.cached,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class TaskSpec:
    """What a task kind provides to pipeline.build(): the kind, its build, its runtime example."""

    kind: Task
    run: Callable[[BuildContext], BuildResult]
    example: str  # the bundle's runtime command for it, e.g. 'embed "turn on the kitchen lights"'
