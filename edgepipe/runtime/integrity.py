"""Hashes and manifest checks shared by the build side and the bundle."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .tasks import Task

MANIFEST = "manifest.json"
# The signature covers the manifest, so the manifest cannot name it: the one file it leaves out.
# model_signing's own default name, so its CLI (`model_signing verify key BUNDLE`) finds it too.
SIGNATURE = "model.sig"
RUNTIME_CONFIG = "runtime.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` except the manifest and signature, by POSIX relative path."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel not in (MANIFEST, SIGNATURE):
                found[rel] = path
    return found


def read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no manifest.json; this is not an edgepipe bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), dict):
        raise ValueError(f"{path}: manifest has no 'files' table of sha256 digests")
    return data


def verify_dir(root: Path) -> list[str]:
    """Problems found comparing ``root``'s files with its manifest; an empty list means intact."""
    manifest = read_manifest(root)
    expected: dict[str, str] = manifest["files"]
    actual = bundle_files(root)
    problems = []
    for rel in sorted(expected.keys() - actual.keys()):
        problems.append(f"missing file: {rel}")
    for rel in sorted(actual.keys() - expected.keys()):
        problems.append(f"file not in manifest: {rel}")
    for rel in sorted(expected.keys() & actual.keys()):
        if actual[rel].is_symlink():
            problems.append(f"symlink where a file belongs: {rel}")
        elif sha256_file(actual[rel]) != expected[rel]:
            problems.append(f"sha256 mismatch: {rel}")
    return problems


def read_runtime(root: Path) -> dict[str, Any]:
    """The bundle's runtime.json as a dict (without the runtime's requirements)."""
    path = root / RUNTIME_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no runtime.json; this is not an edgepipe bundle") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable runtime config: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: runtime config is not a JSON object")
    return data


def bundle_task(root: Path) -> Task:
    """What the bundle does: runtime.json's "task"; embedding bundles predate the field."""
    return Task.parse(str(read_runtime(root).get("task", Task.EMBEDDING.manifest_name)))


def a_bundle(task: Task) -> str:
    """``"an embedding bundle"``, ``"a text-generation bundle"``: for messages."""
    name = task.manifest_name
    return f"{'an' if name[:1] in tuple('aeiou') else 'a'} {name} bundle"


def kept_matmuls(manifest: dict[str, Any]) -> tuple[str, list[str]]:
    """The MatMuls a build kept above its profile's precision, and as what: ("8bit", names) for a
    decoder (its int4 MatMuls' 8-bit exceptions), ("float", names) for an encoder (left in float).
    A decoder bundle built before the name ``kept_8bit`` wrote them as ``kept_float``: read as 8-bit."""
    model = manifest.get("model", {})
    if "kept_8bit" in model:
        return "8bit", list(model["kept_8bit"])
    decoder = manifest.get("task") == "text-generation"
    return ("8bit" if decoder else "float"), list(model.get("kept_float", []))
