"""One stage per module: a typed config and a ``run`` that reads files and writes files."""

from __future__ import annotations

from pathlib import Path

from ..runtime.integrity import sha256_file


def digests(root: Path, names: list[str] | None = None) -> dict[str, str]:
    """sha256 of each file under ``root`` (or of the named ones), by relative POSIX path."""
    paths = [root / n for n in names] if names else sorted(p for p in root.rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in paths}
