"""Hugging Face hub ids (``org/name[@revision]``) as model sources, through the Hugging Face cache.

A hub id resolves to its snapshot in the cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``; huggingface_hub's layout ``models--org--name/{refs,snapshots,blobs}``),
never touching the network. Only fetch() (``build --download``, unless the user set
``HF_HUB_OFFLINE``) downloads, with huggingface_hub, and only safetensors, configs and tokenizer
files.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError, ResourceError
from ..runtime.tasks import Task
from .model import ModelSource

DEFAULT_REVISION = "main"

COMMIT = re.compile(r"[0-9a-f]{40}")
# huggingface_hub's validate_repo_id: letters, digits, '-', '_', '.'; no '--' or '..'; '-' and '.'
# neither first nor last; 96 characters at most.
_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_REVISION = re.compile(r"[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*")
_MAX_REPO_ID = 96
# What a build reads: configs (model, tokenizer, generation, sentence-transformers' modules and
# pooling), the safetensors weights, and tokenizer vocabularies / chat templates. Never pickle
# (*.bin, *.pt, *.pth) unless allowed, never code unless trusted, never other formats (onnx, gguf).
_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken")
_PICKLE_FILES = ("pytorch_model*.bin",)
_CODE_FILES = ("*.py",)
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's reading of HF_HUB_OFFLINE


@dataclass(frozen=True)
class HubId:
    """A model on the Hugging Face hub, as the user named it."""

    repo_id: str  # org/name
    revision: str  # a branch, tag or commit hash; "main" when none was given
    text: str  # as given

    @property
    def name(self) -> str:
        return self.repo_id.split("/")[1]

    def download_command(self) -> str:
        pinned = "" if self.revision == DEFAULT_REVISION else f" --revision {self.revision}"
        return f"hf download {self.repo_id}{pinned}"


def parse(model: str) -> HubId | None:
    """The hub id ``model`` names, or None when it names a path: an existing path always wins, and
    so does the shape of one (starting with '/', '.' or '~', ending in .gguf, or with no '/' or
    several before an '@'). An org/name[@revision] that breaks the hub's naming rules is refused
    in one line."""
    if Path(model).expanduser().exists() or model.startswith(("/", ".", "~")) or "\\" in model:
        return None
    repo_id, at, revision = model.partition("@")
    if repo_id.count("/") != 1 or model.lower().endswith(".gguf"):
        return None
    why = _invalid(repo_id, revision, bool(at))
    if why:
        raise ModelError(
            f"{model}: no such model directory, and not a Hugging Face hub id ({why}); a hub id "
            "is org/name or org/name@revision"
        )
    return HubId(repo_id, revision or DEFAULT_REVISION, model)


def _invalid(repo_id: str, revision: str, has_at: bool) -> str | None:
    for part in repo_id.split("/"):
        if not _PART.fullmatch(part) or "--" in part or ".." in part:
            return (
                f"'{part}' must be letters, digits, '-', '_' or '.', not starting or ending with "
                "'-' or '.', without '--' or '..'"
            )
    if len(repo_id) > _MAX_REPO_ID:
        return f"longer than {_MAX_REPO_ID} characters"
    if has_at and not revision:
        return "empty revision after '@'"
    if revision and (not _REVISION.fullmatch(revision) or ".." in revision.split("/")):
        return f"revision '{revision}' is not a branch, tag or commit name"
    return None


def cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub's rules)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def is_true(value: str | None) -> bool:
    """huggingface_hub's reading of an environment flag such as HF_HUB_OFFLINE."""
    return (value or "").strip().upper() in _TRUE


def cached(hub_id: HubId) -> tuple[Path, str] | None:
    """The cached snapshot directory of ``hub_id``'s revision and its commit, or None."""
    repo = cache_dir() / ("models--" + hub_id.repo_id.replace("/", "--"))
    commit: str | None = hub_id.revision
    if not COMMIT.fullmatch(hub_id.revision):
        try:
            commit = (repo / "refs" / hub_id.revision).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            commit = None
    if commit is None or not COMMIT.fullmatch(commit):
        return None
    snapshot = repo / "snapshots" / commit
    return (snapshot, commit) if snapshot.is_dir() else None


def snapshot(hub_id: HubId) -> tuple[Path, str]:
    """``hub_id``'s snapshot directory and commit, from the cache alone."""
    found = cached(hub_id)
    if found is None:
        raise ModelError(
            f"{_not_cached(hub_id)}; rerun with --download to fetch its safetensors, config and "
            f"tokenizer files, or run `{hub_id.download_command()}`"
        )
    _check_complete(*found, hub_id)
    return found


def fetch(
    hub_id: HubId, offline: bool, allow_pickle: bool = False, trust_remote_code: bool = False
) -> tuple[Path, str]:
    """Bring ``hub_id`` into the cache and give its snapshot: a commit hash already cached, or
    anything when ``offline``, from the cache alone; else from the hub (its ref updated to the
    newest commit), or from the cache when the hub cannot be reached."""
    found = cached(hub_id) if offline or COMMIT.fullmatch(hub_id.revision) else None
    if found is None and offline:
        raise ModelError(
            f"{_not_cached(hub_id)}; HF_HUB_OFFLINE is set, which forbids --download: unset it, "
            f"or run `{hub_id.download_command()}` where the network is allowed"
        )
    if found is None:
        found = _download(hub_id, allow_pickle, trust_remote_code)
    _check_complete(*found, hub_id)
    return found


def _not_cached(hub_id: HubId) -> str:
    return f"{hub_id.text}: no such directory, and not in the Hugging Face cache ({cache_dir()})"


def _check_complete(root: Path, commit: str, hub_id: HubId) -> None:
    """Refuse a snapshot with a link to a blob that is not there (an interrupted download)."""
    for path in sorted(root.rglob("*")):
        if path.is_symlink() and not path.exists():
            raise ModelError(
                f"{hub_id.text}: the cached snapshot {commit} is incomplete "
                f"({path.relative_to(root).as_posix()} points to a missing blob); download it "
                f"again: `{hub_id.download_command()}`"
            )


def _download(hub_id: HubId, allow_pickle: bool, trust_remote_code: bool) -> tuple[Path, str]:
    import requests
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import reset_sessions

    endpoint = os.environ.get("HF_ENDPOINT") or None
    failed = f"{hub_id.text}: cannot download from the Hugging Face hub"
    # huggingface_hub read HF_HUB_OFFLINE once, at import, under the CLI's default of 1: the
    # network is allowed for this call alone (the caller checked the user's own setting).
    was_offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    reset_sessions()
    try:
        try:
            files = HfApi(endpoint=endpoint).list_repo_files(hub_id.repo_id, revision=hub_id.revision)
        except (requests.ConnectionError, requests.Timeout):  # offline first: the cache, if any
            found = cached(hub_id)
            if found is None:
                raise ModelError(
                    f"{failed} (it cannot be reached) and it is not in the cache ({cache_dir()}); "
                    "check the network, or copy the model here and pass its directory"
                ) from None
            return found
        folder = Path(
            snapshot_download(
                hub_id.repo_id,
                revision=hub_id.revision,
                cache_dir=cache_dir(),
                allow_patterns=_patterns(hub_id, files, allow_pickle, trust_remote_code),
                endpoint=endpoint,
            )
        )
    except GatedRepoError:
        raise ModelError(
            f"{failed}: the model is gated; accept its terms on its hub page and log in with "
            "`hf auth login` (or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelError(f"{failed}: no such model (or it is private: log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ModelError(f"{failed}: no revision '{hub_id.revision}'") from None
    except HfHubHTTPError as exc:
        raise ModelError(f"{failed}: {_first_line(exc)}") from None
    except OSError as exc:  # requests' errors too
        if exc.errno == errno.ENOSPC:
            raise ResourceError(f"{failed}: no space left in {cache_dir()}") from None
        raise ModelError(f"{failed}: {_first_line(exc)}") from None
    finally:
        constants.HF_HUB_OFFLINE = was_offline
        reset_sessions()
    return folder, folder.name


def _patterns(hub_id: HubId, files: list[str], allow_pickle: bool, trust_remote_code: bool) -> list[str]:
    """What to fetch of the repo's ``files``: pickle weights only where allowed and there are no
    safetensors (refused here, before any download, when not allowed), code only where trusted."""
    patterns = [*_FILES, *(_CODE_FILES if trust_remote_code else ())]
    if any(f.endswith(".safetensors") for f in files):
        return patterns
    pickles = [f for f in files if any(fnmatch.fnmatch(f, p) for p in _PICKLE_FILES)]
    if pickles and not allow_pickle:
        raise ModelError(
            f"{hub_id.text}: only pickle weights ({pickles[0]}) on the hub, and loading pickle "
            "runs code from the file; pass --allow-pickle if you trust its source"
        )
    return [*patterns, *_PICKLE_FILES]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def source(
    hub_id: HubId, name: str | None, allow_pickle: bool, trust_remote_code: bool, task: Task | None
) -> ModelSource:
    """The ModelSource of ``hub_id``'s snapshot in the Hugging Face cache (fetch() brings one)."""
    from . import directory

    root, commit = snapshot(hub_id)
    return directory.source(
        root,
        "hub",
        name or hub_id.name,
        allow_pickle,
        trust_remote_code,
        task,
        ref=f"{hub_id.repo_id}@{commit}",
        origin={"format": "huggingface", "repo_id": hub_id.repo_id, "revision": hub_id.revision, "commit": commit},
    )
