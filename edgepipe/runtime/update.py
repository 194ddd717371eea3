"""Pulling a bundle from an OCI registry and swapping it in on the device: ``pull``, ``update``,
``rollback``, ``service``. Standard library only; everything is checked before it replaces anything."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import integrity, oci

Progress = Callable[[str], None]
PREVIOUS = ".previous"


class UpdateError(ValueError):
    """The new version was not pulled, did not check out, or cannot be swapped in."""


class SelftestError(UpdateError):
    """The new version does not pass its selftest on this device."""


def _quiet(message: str) -> None:
    pass


def fetch(target: str, dest: Path, public_key: Path | None, progress: Progress = _quiet) -> dict[str, Any]:
    """Pull ``target`` into the empty folder ``dest``: every blob against its digest, then the files
    against the bundle's manifest, then the signature (with ``public_key``); the bundle's manifest."""
    ref = oci.Reference.parse(target)
    client = oci.Client(ref)
    manifest, digest = client.manifest(ref.reference)
    if manifest.get("artifactType") != oci.MODEL_ARTIFACT:
        raise UpdateError(f"{ref}: not an edgepipe bundle (artifactType {manifest.get('artifactType')!r})")
    progress(f"pull: {ref} is {digest}")
    config = client.blob_bytes(manifest["config"], dest)
    layers = manifest.get("layers") or []
    if json.loads(config).get("modelfs", {}).get("diffIds") != [layer.get("digest") for layer in layers]:
        raise UpdateError(f"{ref}: the model config's diffIds do not name the manifest's layers")
    for number, layer in enumerate(layers, 1):
        rel = str((layer.get("annotations") or {}).get(oci.FILEPATH, ""))
        if not oci.safe_path(rel) or rel == integrity.SIGNATURE:
            raise UpdateError(f"{ref}: layer {layer.get('digest')} has an unsafe path {rel!r}")
        path = dest / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            client.blob(layer, path)
        except OSError as exc:  # two layers claiming one path as a file and a folder, or a full disk
            raise UpdateError(f"{ref}: cannot write {rel} ({exc.strerror or exc})") from None
        progress(f"pull: {number}/{len(layers)} {rel}")
    signatures = [r for r in client.referrers(digest) if r.get("artifactType") == oci.SIGNATURE_ARTIFACT]
    if signatures:
        attached, _ = client.manifest(signatures[0]["digest"], oci.MANIFEST)
        client.blob(attached["layers"][0], dest / integrity.SIGNATURE)
        progress("pull: signature")
    problems = integrity.verify_dir(dest)
    if problems:
        raise UpdateError(f"{ref}: the pulled files do not match the bundle's manifest ({problems[0]})")
    if public_key is not None:
        from .signature import verify_signature

        verify_signature(dest, public_key, shown=Path(str(ref)))
        progress("pull: signature checked")
    return integrity.read_manifest(dest)


def pull(target: str, out: Path, public_key: Path | None = None, progress: Progress = _quiet) -> dict[str, Any]:
    """Pull into ``out`` (absent or empty): written beside it and renamed only once all checks pass."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UpdateError(f"{out}: exists and is not empty; pull into a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.pull-", dir=out.parent))
    try:
        manifest = fetch(target, staging, public_key, progress)
        if out.is_dir():
            out.rmdir()
        os.rename(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def exchange(a: Path, b: Path) -> None:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE); elsewhere by two renames."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
            raise OSError(code, os.strerror(code), str(a))
    side = a.with_name(a.name + ".swap")
    os.rename(a, side)
    os.rename(b, a)
    os.rename(side, b)


def _selftest(root: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(root), "selftest", "--json"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        raise SelftestError(f"the new version fails its selftest on this device (exit {done.returncode}: {last})")


def _clean(root: Path) -> None:
    for stale in root.parent.glob(f".{root.name}.update-*"):
        shutil.rmtree(stale, ignore_errors=True)


def update(root: Path, target: str, public_key: Path | None = None, progress: Progress = _quiet) -> dict[str, Any]:
    """Pull ``target`` beside the running bundle ``root``, check it (digests, manifest, signature,
    selftest), swap it in and keep the replaced one as ``<root>.previous``; the new manifest."""
    signed = (root / integrity.SIGNATURE).is_file()
    if signed and public_key is None:
        raise UpdateError(f"{root}: is signed; pass --public-key PEM so that the new version is checked with the key")
    if signed and public_key is not None:  # the same key: the one that signed what runs now
        from .signature import verify_signature

        verify_signature(root, public_key)
    _clean(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.update-", dir=root.parent))
    try:
        manifest = fetch(target, staging, public_key, progress)
        if signed and not (staging / integrity.SIGNATURE).is_file():
            raise UpdateError(f"{target}: is not signed, but the running bundle is; refusing to replace it")
        progress("update: checked digests, manifest and signature")
        _selftest(staging)
        progress("update: selftest passed")
        previous = root.with_name(root.name + PREVIOUS)
        exchange(staging, root)  # root is the new version from here on; staging holds the old one
        progress("update: swapped in")
        if previous.exists():
            shutil.rmtree(previous)
        os.rename(staging, previous)
        progress(f"update: kept the replaced version as {previous.name}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def rollback(root: Path) -> dict[str, Any]:
    """Swap ``<root>.previous`` back in (the replaced version becomes ``.previous``)."""
    previous = root.with_name(root.name + PREVIOUS)
    if not previous.is_dir():
        raise UpdateError(f"{previous}: no previous version to roll back to")
    problems = integrity.verify_dir(previous)
    if problems:
        raise UpdateError(f"{previous}: does not match its manifest ({problems[0]}); not rolling back")
    exchange(previous, root)
    return integrity.read_manifest(root)


def unit(root: Path, port: int, user: bool) -> str:
    name = integrity.read_manifest(root).get("name", root.name)
    return f"""[Unit]
Description=edgepipe bundle {name} (python {root} serve)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStart={sys.executable} {root} serve --host 127.0.0.1 --port {port}
WorkingDirectory={root.parent}
Restart=on-failure
RestartSec=2
# `python {root.name} update` swaps the folder in place; a restart runs the new version.
KillSignal=SIGTERM
TimeoutStopSec=30

[Install]
WantedBy={"default.target" if user else "multi-user.target"}
"""


def unit_name(root: Path) -> str:
    return "edgepipe-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in root.name) + ".service"


def service(root: Path, port: int, user: bool, out: Path | None = None) -> Path:
    """Write the systemd unit that runs ``serve``; its path."""
    name = unit_name(root)
    if out is None:
        config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        out = (config / "systemd" / "user" if user else Path("/etc/systemd/system")) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(unit(root, port, user), encoding="utf-8")
    os.replace(tmp, out)
    return out
