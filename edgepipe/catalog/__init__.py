"""Finds target and profile files (built-in and the user's) and resolves names to them."""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from ..errors import ConfigError
from .config import Profile, Target, load_yaml_model

T = TypeVar("T", Target, Profile)

_PACKAGE = Path(__file__).resolve().parent.parent


def builtin_dir(kind: str) -> Path:
    """`targets/` or `profiles/`: inside the wheel when installed, else at the source tree's top."""
    installed = _PACKAGE / "_builtin" / kind
    return installed if installed.is_dir() else _PACKAGE.parent / kind


def search_path(kind: str, extra: Sequence[Path] = ()) -> list[Path]:
    """Directories searched for ``kind`` files, first match wins: options, environment, built-in."""
    env = os.environ.get(f"EDGEPIPE_{kind.upper()}_PATH", "")
    dirs = [*extra, *(Path(p) for p in env.split(os.pathsep) if p), builtin_dir(kind)]
    for d in dirs[:-1]:
        if not d.is_dir():
            raise ConfigError(f"{d}: {kind} directory does not exist")
    return dirs


@dataclass(frozen=True)
class Catalog(Generic[T]):
    kind: str
    model: type[T]
    dirs: tuple[Path, ...]

    def files(self) -> dict[str, Path]:
        """Name -> file, where a file earlier on the search path hides a later one of that name."""
        found: dict[str, Path] = {}
        for d in reversed(self.dirs):
            for path in sorted(d.glob("*.yaml")):
                found[path.stem] = path
        return dict(sorted(found.items()))

    def load(self, name_or_path: str) -> T:
        path = Path(name_or_path)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"{path}: {self.kind[:-1]} file does not exist")
            return self._load(path)
        files = self.files()
        if name_or_path not in files:
            close = difflib.get_close_matches(name_or_path, files, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(
                f"unknown {self.kind[:-1]} '{name_or_path}': {hint}"
                f"known: {', '.join(files) or 'none'} (see `edgepipe {self.kind}`)"
            )
        return self._load(files[name_or_path])

    def all(self) -> list[T]:
        return [self._load(path) for path in self.files().values()]

    def _load(self, path: Path) -> T:
        item = load_yaml_model(path, self.model)
        if path.suffix in (".yaml", ".yml") and item.name != path.stem:
            raise ConfigError(
                f"{path}: {self.kind[:-1]} field 'name': '{item.name}' must match the file name '{path.stem}'"
            )
        return item


def targets(extra: Sequence[Path] = ()) -> Catalog[Target]:
    return Catalog("targets", Target, tuple(search_path("targets", extra)))


def profiles(extra: Sequence[Path] = ()) -> Catalog[Profile]:
    return Catalog("profiles", Profile, tuple(search_path("profiles", extra)))
