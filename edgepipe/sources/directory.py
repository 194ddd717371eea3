"""A Hugging Face model directory as a model source: every check it must pass (weights, tokenizer,
config, task), and the finished ModelSource. GGUF and hub sources end here too."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ..catalog import families
from ..errors import ModelError
from ..runtime.tasks import Task
from .model import DEFAULT_MODEL_NAME, ModelSource, directory_digest, packaged_default, slug

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# sentence-transformers' CrossEncoder marks its config.json with "sentence_transformers" (v4+) or
# this key (before).
CROSS_ENCODER_MARK = "sbert_ce_default_activation_function"


def _check_safetensors(path: Path) -> None:
    """Refuse an LFS pointer, or a file whose header or data is cut short or malformed."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if head + f.read(len(_LFS_POINTER) - 8) == _LFS_POINTER:
            raise ModelError(f"{path}: a Git LFS pointer, not weights; run `git lfs pull` in the model directory")
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


def check_weights(root: Path, allow_pickle: bool) -> None:
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
                raise ModelError(f"{pickles[0]}: a Git LFS pointer, not weights; run `git lfs pull`")
        return
    raise ModelError(f"{root}: no model weights (model.safetensors) found")


def check_tokenizer(root: Path, config: dict[str, Any]) -> None:
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


def model_task(config: dict[str, Any], entry: families.Family, requested: Task | str | None, where: str) -> Task:
    """The task to build: ``requested`` (--task) if the model can do it, else what config.json
    says: a sequence-classification head with one output is a reranker, with more a classifier;
    any other model its family's default task. ModelError when the model cannot do the task."""
    head = _head(config)
    found = entry.tasks[0]
    if head is not None and entry.tasks[0] == families.EMBEDDING:
        found = families.RERANKING if head == 1 else families.CLASSIFICATION
    task = Task.parse(requested) if requested else found
    if task not in entry.tasks:
        raise ModelError(
            f"{where}: {entry.model_type} models are not built for {task.manifest_name}; --task one of: "
            f"{entry.task_names()}"
        )
    if task.is_head:
        if head is None:
            raise ModelError(
                f"{where}: {task.manifest_name} needs a sequence-classification head (architectures "
                f"{config.get('architectures')}); use a *ForSequenceClassification checkpoint"
            )
        if (head == 1) != (task == families.RERANKING):
            right = families.RERANKING if head == 1 else families.CLASSIFICATION
            raise ModelError(
                f"{where}: the head has {head} output{'s' * (head != 1)}, which makes it a "
                f"{right.manifest_name} model, not {task.manifest_name}; pass --task {right.manifest_name} or leave --task out"
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


def source(
    root: Path,
    kind: str,
    name: str,
    allow_pickle: bool,
    trust_remote_code: bool,
    task: Task | None = None,
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
    check_weights(root, allow_pickle)
    check_tokenizer(root, config)
    return ModelSource(
        path=root,
        name=slug(name),
        kind=kind,
        model_type=model_type,
        task_kind=chosen,
        digest=directory_digest(root),
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        ref=ref,
        origin=origin or {"format": "huggingface"},
    )


def local(
    model: str | None, name: str | None, allow_pickle: bool, trust_remote_code: bool, task: Task | None
) -> ModelSource:
    """The ModelSource of a local directory, or of the packaged default when ``model`` is None."""
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
    return source(root, kind, name or default_name, allow_pickle, trust_remote_code, task)
