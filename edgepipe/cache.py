"""Content-addressed stage cache: a stage's files and record, keyed by everything that made them.

Key = sha256 of the stage name, its full config, the digests of its input files and the versions of
the tools that ran it (the whole 64 hex digits: Olive's 8-character keys let two models share one
entry). Entries are written to a temp dir and renamed into place, so a killed build leaves no
half-written entry; a hit is checked file by file against its record before use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runtime.integrity import sha256_file

RECORD = "record.json"


def default_dir() -> Path:
    env = os.environ.get("EDGEPIPE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "edgepipe"


def cache_key(stage: str, config: dict[str, Any], inputs: dict[str, str], versions: dict[str, str]) -> str:
    blob = json.dumps(
        {"stage": stage, "config": config, "inputs": inputs, "versions": versions},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class Lookup:
    record: dict[str, Any] | None
    corrupt: bool = False


@dataclass(frozen=True)
class StageCache:
    root: Path

    def entry(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def verified(self, stage: str, key: str) -> Lookup:
        """An entry's record if every file matches it; a corrupt entry is dropped."""
        entry = self.entry(stage, key)
        try:
            record = json.loads((entry / RECORD).read_text(encoding="utf-8"))
            outputs: dict[str, str] = record["outputs"]
            intact = all(sha256_file(entry / rel) == digest for rel, digest in outputs.items())
        except FileNotFoundError:
            if not entry.exists():
                return Lookup(None)
            intact = False
        except (OSError, ValueError, KeyError, TypeError):
            intact = False
        if not intact:
            shutil.rmtree(entry, ignore_errors=True)
            return Lookup(None, corrupt=True)
        return Lookup(record)

    def get(self, stage: str, key: str, dest: Path) -> Lookup:
        """Copy a verified entry's files into ``dest`` and return its record; drop a corrupt entry."""
        lookup = self.verified(stage, key)
        if lookup.record is None:
            return lookup
        entry = self.entry(stage, key)
        for rel in lookup.record["outputs"]:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(entry / rel, dest / rel)
        return lookup

    def find_output(self, stage: str, rel: str, digest: str) -> Path | None:
        """A stored file of ``stage`` named ``rel`` whose content has sha256 ``digest``, if any."""
        parent = self.root / stage
        entries = sorted(parent.iterdir()) if parent.is_dir() else []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                record = json.loads((entry / RECORD).read_text(encoding="utf-8"))
                if record["outputs"].get(rel) == digest and sha256_file(entry / rel) == digest:
                    return entry / rel
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
        return None

    def put(self, stage: str, key: str, src: Path, record: dict[str, Any]) -> None:
        """Store ``src``'s output files and ``record`` under ``key``, atomically."""
        parent = self.root / stage
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
        try:
            for rel in record["outputs"]:
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, tmp / rel)
            (tmp / RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False))
            # Another build may have stored the same entry first; its content is the same.
            with contextlib.suppress(OSError):
                tmp.rename(self.entry(stage, key))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        stages: dict[str, dict[str, int]] = {}
        if self.root.is_dir():
            for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
                entries = [p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".")]
                size = sum(f.stat().st_size for e in entries for f in e.rglob("*") if f.is_file())
                stages[stage_dir.name] = {"entries": len(entries), "bytes": size}
        return {
            "path": str(self.root),
            "stages": stages,
            "entries": sum(s["entries"] for s in stages.values()),
            "bytes": sum(s["bytes"] for s in stages.values()),
        }

    def clear(self) -> int:
        """Remove every entry; the number removed."""
        count = self.info()["entries"]
        if self.root.is_dir():
            for stage_dir in self.root.iterdir():
                if stage_dir.is_dir():
                    shutil.rmtree(stage_dir)
        return int(count)


def texts_digest(texts: Sequence[str]) -> str:
    """sha256 of a list of texts: what a stage run on them puts in its cache key."""
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()
