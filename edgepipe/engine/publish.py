"""Publishing: the chosen attempt's bundle, SBOM, manifest, signature and archive; one writer per
bundle name; the atomic swap; a benchmark recorded into (or a signature added to) a built bundle."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..catalog.config import Target
from ..errors import ResourceError, VerifyError
from ..graph.checks import check_external_data, check_runtime_support
from ..runtime.embedder import EmbeddingConfig
from ..runtime.generator import GenerationConfig
from ..runtime.integrity import SIGNATURE, read_manifest, verify_dir
from ..runtime.scorer import ScoringConfig
from ..stages import bundle, wheels
from ..trust import sbom, signing
from .licences import adapter_licence_of, licence_of
from .runner import StageRunner, versions
from .search import Attempt, attempts_table
from .spec import BuildContext, BuildResult


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


# The manifest's "stages": each record key of the chosen attempt's stages, where the build ran it.
def _chosen_records(stage: StageRunner, chosen: Attempt) -> dict[str, dict[str, Any]]:
    keys = (
        ("export", "export"),
        ("reference", "reference"),
        ("quantize", f"quantize/{chosen.label}"),
        ("evaluate", f"evaluate/{chosen.label}"),
        ("bench", f"bench/{chosen.label}"),
        ("wheels", "wheels"),
        ("sensitivity", f"sensitivity/{chosen.profile}"),
    )
    return {label: stage.records[key] for label, key in keys if key in stage.records}


def write_bundle(
    ctx: BuildContext,
    chosen: Attempt,
    attempts: list[Attempt],
    *,
    runtime: EmbeddingConfig | GenerationConfig | ScoringConfig,
    tokenizer_dir: Path,
    fp32_onnx: dict[str, Any],
    bench_fields: dict[str, Any],
    example: str,
    selftest: dict[str, bytes] | None = None,
) -> BuildResult:
    """The bundle of the chosen attempt in ``staging/name``, its manifest and its archive."""
    target, stage, name = ctx.spec.target, ctx.stage, ctx.name
    check_external_data(chosen.model)
    check_runtime_support(chosen.model, target)
    ctx.report("bundle", None)
    start = time.perf_counter()
    dest = ctx.staging / name
    bundle.assemble(
        dest,
        chosen.model,
        tokenizer_dir,
        runtime,
        ctx.requirements_txt,
        ctx.wheel_dir,
        task=ctx.source.task,
    )
    for file, data in (selftest or {}).items():  # what `python BUNDLE selftest` re-evaluates
        (dest / "selftest").mkdir(exist_ok=True)
        (dest / "selftest" / file).write_bytes(data)
    licence = licence_of(ctx.source)
    for path in licence.files:  # the licence, notice and use policy travel with the model
        (dest / "licenses").mkdir(exist_ok=True)
        shutil.copyfile(path, dest / "licenses" / path.name)
    adapter_licence = adapter_licence_of(ctx.source)
    for path in adapter_licence.files if adapter_licence else ():  # the adapter's beside the base's
        (dest / "licenses" / "adapter").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / "licenses" / "adapter" / path.name)
    records = _chosen_records(stage, chosen)
    chosen_profile = next(p for p in ctx.profiles if p.name == chosen.profile)
    table = attempts_table(attempts)
    document = {
        "schema": "edgepipe.bundle/1",
        "name": name,
        "task": ctx.source.task,
        "model": {
            "path": "model/model.onnx",
            "sha256": records["quantize"]["outputs"]["model.onnx"],
            "size_bytes": chosen.size_bytes,
            f"kept_{chosen.kept_as}": chosen.kept,  # kept_8bit (decoders) or kept_float
            "source": ctx.source.describe(),
        },
        "target": target.model_dump(mode="json"),
        "profile": chosen_profile.model_dump(mode="json"),
        "versions": versions(),
        "requirements": ctx.specs,
        **({"wheels": _wheels_entry(ctx.downloaded, target)} if ctx.downloaded else {}),
        "accuracy": {**chosen.accuracy, "fp32_onnx": fp32_onnx},
        "bench": chosen.bench,
        "attempts": table,
        "stages": records,
        "licence": {
            **licence.to_json(),
            "obligations": licence.obligations(),
            **({"adapter": adapter_licence.to_json("licenses/adapter")} if adapter_licence else {}),
        },
    }
    sbom.write(
        dest, document, ctx.source.path, licence, adapter_licence
    )  # before finish(): the manifest covers the SBOM
    manifest = bundle.finish(dest, document)
    sign_with = ctx.spec.sign_with
    if sign_with is not None:  # after finish(): the signature covers the manifest
        signing.sign_dir(dest, sign_with)
    bundle.write_archive(dest, ctx.staging / f"{name}.tar.gz")
    stage.seconds["bundle"] = round(time.perf_counter() - start, 2)
    ctx.report("bundle", f"{name} ({len(manifest['files'])} files)")
    return BuildResult(
        dest,
        ctx.staging / f"{name}.tar.gz",
        manifest,
        stage.seconds,
        stage.cached,
        table,
        bench_fields=bench_fields,
        example=example,
        signed=sign_with is not None,
    )


def _wheels_entry(downloaded: dict[str, Any], target: Target) -> dict[str, Any]:
    return {
        "dir": wheels.DIR,
        "platforms": downloaded["platforms"],
        "python": target.platform.python,
        "files": downloaded["wheels"],
        "install": "pip install --no-index --find-links wheels -r requirements.txt",
    }


def _link_or_copy(src: str, dst: str) -> None:
    # Unchanged files are hard links: no copy of a large model, and the old dir is never touched.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def rewrite_bundle(root: Path, edit: Callable[[Path, dict[str, Any]], None], drop: tuple[str, ...], doing: str) -> bool:
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
            raise VerifyError(f"{root}: does not match its manifest ({problems[0]}); rebuild it before {doing}")
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=out))
        try:
            new = staging / name
            shutil.copytree(
                root,
                new,
                copy_function=_link_or_copy,
                ignore=lambda d, names: [n for n in names if n == "__pycache__" or (Path(d) == root and n in drop)],
            )
            edit(new, manifest)
            archived = (out / f"{name}.tar.gz").is_file()
            if archived:
                bundle.write_archive(new, staging / f"{name}.tar.gz")
            publish(staging, out, name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return archived


def record_bench(root: Path, result: dict[str, Any], key: str = "bench") -> bool:
    """Write ``result`` into the bundle's manifest (as ``key``: the device's is "device_bench")
    and documents (``rewrite_bundle``).

    A signature is left out: it signed the old manifest (`edgepipe sign` the bundle again).
    """

    def edit(new: Path, manifest: dict[str, Any]) -> None:
        if manifest["model"]["sha256"] != result["models"]["model"]["sha256"]:
            raise ResourceError(f"{root}: the bundle's model changed while it was benchmarked")
        manifest = {k: v for k, v in manifest.items() if k != "files"}
        bundle.finish(new, {**manifest, key: result})

    return rewrite_bundle(root, edit, (*bundle.DOCUMENTS, SIGNATURE), "recording a benchmark in it")


def sign_bundle(root: Path, key: signing.SigningKey) -> bool:
    """Sign a published bundle in place (atomically) and rewrite its archive if it has one;
    returns whether it had. A bundle that does not match its manifest is refused."""
    key.check()

    def edit(new: Path, manifest: dict[str, Any]) -> None:
        signing.sign_dir(new, key)

    return rewrite_bundle(root, edit, (SIGNATURE,), "signing it")
