"""What ``--model`` names, resolved in one trip down: a local directory or the packaged default
(directory.py), a GGUF file (gguf.py), a hub id through the Hugging Face cache (hub.py); each
returns the finished ModelSource (model.py)."""

from __future__ import annotations

import json
from pathlib import Path

from ..catalog import families
from ..errors import ModelError
from ..runtime.tasks import Task
from . import directory, gguf, hub
from .model import DEFAULT_MODEL_NAME, ModelSource, directory_digest, packaged_default, slug

__all__ = [
    "DEFAULT_MODEL_NAME",
    "ModelSource",
    "directory_digest",
    "download",
    "packaged_default",
    "peek_kind",
    "peek_task",
    "resolve",
    "slug",
]


def peek_task(model: str | None, requested: Task | str | None = None) -> str | None:
    """peek_kind()'s task as a bundle's manifest names it (``text-generation``)."""
    kind = peek_kind(model, requested)
    return None if kind is None else kind.manifest_name


def peek_kind(model: str | None, requested: Task | str | None = None) -> Task | None:
    """The task of ``model`` from its config.json alone (no checks, no download; resolve() does
    them), or None when that cannot be told: the CLI picks the target's default profile with it."""
    if requested is not None:
        return Task.parse(requested)
    if model is None:
        return Task.EMBEDDING
    if gguf.is_gguf(model):
        return families.FAMILIES[gguf.ARCHITECTURES[0]].tasks[0]
    root = Path(model).expanduser()
    try:
        hub_id = hub.parse(model)
    except ModelError:
        return None
    if hub_id is not None:
        snapshot = hub.cached(hub_id)
        if snapshot is None:
            return None
        root = snapshot[0]
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    found = families.FAMILIES.get(str(config.get("model_type", "")))
    if found is None:
        return None
    try:
        return directory.model_task(config, found, None, "config.json")
    except ModelError:
        return found.tasks[0]


def resolve(
    model: str | None,
    name: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    task: Task | str | None = None,
) -> ModelSource:
    """Check ``model`` (a directory, a GGUF file, a hub id org/name[@revision], or None for the
    packaged default) and describe it; a GGUF is converted into the cache first (once per file
    content); a hub id is its snapshot in the Hugging Face cache (download() fetches one).
    ``task`` (--task) overrides the task config.json implies, where the model can do it."""
    task = None if task is None else Task.parse(task)
    if model is not None and gguf.is_gguf(model):
        return gguf.source(Path(model).expanduser().resolve(), name, task)
    hub_id = None if model is None else hub.parse(model)
    if hub_id is not None:
        return hub.source(hub_id, name, allow_pickle, trust_remote_code, task)
    return directory.local(model, name, allow_pickle, trust_remote_code, task)


def download(
    model: str | None, offline: bool, allow_pickle: bool = False, trust_remote_code: bool = False
) -> str | None:
    """Fetch ``model`` into the Hugging Face cache when it is a hub id (hub.fetch: never with
    ``offline``, never pickle or code unless allowed); its commit, or None for a local model."""
    hub_id = None if model is None or gguf.is_gguf(model) else hub.parse(model)
    if hub_id is None:
        return None
    return hub.fetch(hub_id, offline, allow_pickle, trust_remote_code)[1]
