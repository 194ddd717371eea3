"""PEFT LoRA adapters (``--adapter``: a directory or a hub id) merged into their base model in float32.

The merged model is an ordinary Hugging Face directory, written once per (base, adapter) into the
stage cache: export, calibration, sensitivity and the accuracy guard all see the adapted model, and
the guard's reference is the merged PyTorch model. PEFT does the merge (rsLoRA's alpha/sqrt(r)
scaling, DoRA's magnitudes, rank and alpha patterns, a classification head saved whole); the shapes
are checked here first, so an adapter of another base fails on one line before anything is built.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import shutil
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import StageCache, cache_key, default_dir
from ..errors import ModelError
from ..runtime.integrity import sha256_file
from ..runtime.tasks import Task
from . import directory, hub
from .model import ModelSource, directory_digest, slug

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
CACHE_STAGE = "adapter"
# Bump when the merged directory's content changes for the same inputs: it is part of the cache key.
MERGE_VERSION = 1
_PREFIX = "base_model.model."
# The PEFT task types edgepipe builds, and the transformers class the base is loaded with.
TASK_TYPES = {"CAUSAL_LM": "AutoModelForCausalLM", "SEQ_CLS": "AutoModelForSequenceClassification"}
# Heads PEFT saves whole with a SEQ_CLS adapter (its modules_to_save defaults).
HEADS = ("classifier", "score")
# LoRA variants whose merged weights would not compute what the adapter computes, by config key.
_REFUSED = {
    "layer_replication": "layer replication (it changes the base's layers)",
    "alora_invocation_tokens": "activated LoRA (aLoRA applies only after its invocation tokens)",
    "use_qalora": "QALoRA",
    "use_bdlora": "BD-LoRA",
}
# Files of the base directory that the merged one keeps (tokenizer, templates, pooling...):
# everything but the weights and config.json, which save_pretrained writes.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "vocab.txt", "merges.txt", "vocab.json", "tokenizer.model",
    "added_tokens.json",
)  # fmt: skip
_BASE_FILES = ("README.md", "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


@dataclass(frozen=True)
class Adapter:
    """A checked PEFT LoRA adapter directory and what its config says."""

    path: Path
    ref: str  # as the manifest names it: the directory, or the hub id pinned to its commit
    name: str
    digest: str
    config: dict[str, Any] = field(repr=False)
    shapes: dict[str, list[int]] = field(repr=False)
    origin: dict[str, Any] = field(default_factory=dict)

    @property
    def task_type(self) -> str:
        return str(self.config.get("task_type") or "CAUSAL_LM")

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", 8))

    @property
    def scaling(self) -> float:
        """PEFT's scaling of B @ A: alpha / r, or alpha / sqrt(r) with rsLoRA."""
        return self.alpha / (self.rank**0.5 if self.config.get("use_rslora") else self.rank)

    def head_labels(self) -> int | None:
        """Outputs of the classification head the adapter saves whole, or None."""
        for head in HEADS:
            for key in (f"{_PREFIX}{head}.weight", f"{_PREFIX}{head}.out_proj.weight"):
                if key in self.shapes:
                    return self.shapes[key][0]
        return None

    def describe(self) -> dict[str, Any]:
        targets = self.config.get("target_modules")
        return {
            "ref": self.ref,
            "digest": f"sha256:{self.digest}",
            "weights_sha256": sha256_file(self.path / WEIGHTS),
            "peft_type": "LORA",
            "task_type": self.task_type,
            "rank": self.rank,
            "alpha": self.alpha,
            "scaling": self.scaling,
            "rslora": bool(self.config.get("use_rslora")),
            "dora": bool(self.config.get("use_dora")),
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "modules_to_save": self.config.get("modules_to_save"),
            **({"rank_pattern": self.config["rank_pattern"]} if self.config.get("rank_pattern") else {}),
            **({"alpha_pattern": self.config["alpha_pattern"]} if self.config.get("alpha_pattern") else {}),
            "base_model_name_or_path": self.config.get("base_model_name_or_path"),
            **self.origin,
        }


def is_adapter(root: Path) -> bool:
    return (root / CONFIG).is_file()


def _header(path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v for k, v in header.items() if k != "__metadata__"}


def inspect(root: Path, ref: str, name: str, digest: str, origin: dict[str, Any] | None = None) -> Adapter:
    """Check ``root`` is a PEFT LoRA adapter edgepipe can merge: its config, its safetensors."""
    path = root / CONFIG
    if not path.is_file():
        hint = "; pass the model as --model" if (root / "config.json").is_file() else ""
        raise ModelError(f"{root}: no {CONFIG}; not a PEFT adapter directory{hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable adapter config: {exc}") from None
    if not isinstance(config, dict):
        raise ModelError(f"{path}: the adapter config must be a JSON object")
    kind = config.get("peft_type")
    if kind != "LORA":
        raise ModelError(
            f"{path}: PEFT adapter type '{kind or '?'}' is not supported; only LoRA (peft_type LORA, "
            "with rsLoRA and DoRA); merge it yourself (merge_and_unload) and pass the merged model"
        )
    task_type = config.get("task_type") or "CAUSAL_LM"
    if task_type not in TASK_TYPES:
        raise ModelError(f"{path}: PEFT task type '{task_type}' is not supported; supported: {', '.join(TASK_TYPES)}")
    for key, what in _REFUSED.items():
        if config.get(key):
            raise ModelError(f"{path}: {what} is not supported; merge it yourself and pass the merged model")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        raise ModelError(f"{path}: the adapter's rank r must be a positive integer, not {config.get('r')!r}")
    weights = root / WEIGHTS
    if not weights.is_file():
        pickled = "adapter_model.bin" if (root / "adapter_model.bin").is_file() else None
        raise ModelError(
            f"{root}: no {WEIGHTS}"
            + (
                " (only adapter_model.bin, pickle, which runs code when loaded; save it again with "
                "safe_serialization=True)"
                if pickled
                else ""
            )
        )
    directory.check_safetensors(weights)
    shapes = {k: list(v["shape"]) for k, v in _header(weights).items()}
    if not any(".lora_" in k for k in shapes):
        raise ModelError(f"{weights}: holds no LoRA weights (lora_A / lora_B); not a LoRA adapter")
    return Adapter(root, ref, name, digest, config, shapes, origin or {})


def _features(module: Any) -> tuple[int, int] | None:
    """(inputs, outputs) of a layer LoRA can adapt, or None for another kind of module."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    if type(module).__name__ == "Conv1D":  # GPT-2's transposed Linear: weight is (in, out)
        rows, cols = module.weight.shape
        return int(rows), int(cols)
    if hasattr(module, "num_embeddings"):
        return int(module.num_embeddings), int(module.embedding_dim)
    return None


def check_fits(adapter: Adapter, model: Any, base: str) -> None:
    """ModelError naming the first adapter tensor whose module or shape the base lacks."""
    modules = dict(model.named_modules())
    params = {n: list(p.shape) for n, p in model.named_parameters()}
    wrong = f"{adapter.path}: does not fit the base model {base}"
    for key, shape in sorted(adapter.shapes.items()):
        name = key.removeprefix(_PREFIX)
        if ".lora_" not in name:
            if name in params and params[name] != shape:
                raise ModelError(
                    f"{wrong}: {name} is {'x'.join(map(str, shape))} in the adapter, "
                    f"{'x'.join(map(str, params[name]))} in the base; it was trained on another model"
                )
            if name not in params and not any(name.startswith(f"{h}.") for h in HEADS):
                raise ModelError(f"{wrong}: the base has no {name}; it was trained on another model")
            continue
        owner, _, part = name.partition(".lora_")
        module = modules.get(owner)
        sizes = None if module is None else _features(module)
        if sizes is None:
            raise ModelError(
                f"{wrong}: it adapts {owner}, a layer the base does not have; it was trained on another model"
            )
        inputs, outputs = sizes
        if part.startswith(("A.", "embedding_A")):
            expected, got, what = inputs, shape[-1], "inputs"
        elif part.startswith(("B.", "embedding_B", "magnitude_vector")):  # DoRA: one magnitude per output
            expected, got, what = outputs, shape[0], "outputs"
        else:
            continue
        if got != expected:
            raise ModelError(
                f"{wrong}: its LoRA for {owner} has {got} {what}, the base's layer {expected}; it was "
                "trained on another model"
            )


def _load_base(base: Path, adapter: Adapter, trust_remote_code: bool) -> Any:
    import torch
    import transformers

    auto = getattr(transformers, TASK_TYPES[adapter.task_type])
    kwargs: dict[str, Any] = {}
    labels = adapter.head_labels()
    if adapter.task_type == "SEQ_CLS" and labels is not None:
        config = json.loads((base / "config.json").read_text(encoding="utf-8"))
        has_head = any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])
        found = len(config.get("id2label") or {}) or config.get("num_labels")
        if has_head and found != labels:
            raise ModelError(
                f"{adapter.path}: does not fit the base model {base}: its head has {labels} outputs, "
                f"the base's {found}; it was trained on another model"
            )
        if not has_head:
            kwargs["num_labels"] = labels
    return auto.from_pretrained(
        str(base), dtype=torch.float32, trust_remote_code=trust_remote_code, local_files_only=True, **kwargs
    )


def merge(base: Path, adapter: Adapter, dest: Path, trust_remote_code: bool = False) -> None:
    """Write ``base`` with ``adapter`` merged in, float32 safetensors and the base's tokenizer
    (the adapter's own tokenizer files, where it has them), to ``dest``."""
    from peft import PeftModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialized": the adapter's head
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            model = _load_base(base, adapter, trust_remote_code).eval()
            check_fits(adapter, model, str(base))
            try:
                peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
                merged = peft_model.merge_and_unload(safe_merge=True)
            except (RuntimeError, ValueError, KeyError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelError(f"{adapter.path}: PEFT cannot merge it into {base} ({first})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    merged.eval().save_pretrained(dest, safe_serialization=True)
    for source in (base, adapter.path):  # the adapter's tokenizer (a new chat template) wins
        for name in _TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, dest / name)
    for extra in sorted(base.iterdir()):  # the card and licence, sentence-transformers' modules
        if extra.name in _BASE_FILES or extra.name.upper().startswith("LICENSE"):
            shutil.copyfile(extra, dest / extra.name)
        elif extra.is_dir() and extra.name[:1].isdigit() and not (dest / extra.name).exists():
            shutil.copytree(extra, dest / extra.name)


def merged(base: Path, base_digest: str, adapter: Adapter, cache: StageCache, trust_remote_code: bool = False) -> Path:
    """The merged directory of ``base`` + ``adapter`` from the cache, merging first on a miss."""
    import peft
    import torch
    import transformers

    key = cache_key(
        CACHE_STAGE,
        {"merge": MERGE_VERSION},
        {"base": base_digest, "adapter": adapter.digest},
        {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch.__version__},
    )
    if cache.verified(CACHE_STAGE, key).record is not None:
        return cache.entry(CACHE_STAGE, key)
    with tempfile.TemporaryDirectory(prefix="edgepipe-adapter-") as tmp:
        work = Path(tmp)
        merge(base, adapter, work, trust_remote_code)
        outputs = {p.relative_to(work).as_posix(): sha256_file(p) for p in sorted(work.rglob("*")) if p.is_file()}
        record = {"base": f"sha256:{base_digest}", "adapter": f"sha256:{adapter.digest}", "outputs": outputs}
        cache.put(CACHE_STAGE, key, work, record)
    return cache.entry(CACHE_STAGE, key)


def peek_task(text: str) -> Task | None:
    """The task a merged model will have, from the adapter's files alone, where the adapter decides
    it (a SEQ_CLS head: one output a reranker, more a classifier); None otherwise."""
    root = _root(text, cached_only=True)
    if root is None:
        return None
    try:
        config = json.loads((root / CONFIG).read_text(encoding="utf-8"))
        if config.get("task_type") != "SEQ_CLS":
            return None
        shapes = {k: v["shape"] for k, v in _header(root / WEIGHTS).items()}
    except (OSError, ValueError, KeyError, TypeError, struct.error, AttributeError):
        return None
    for head in HEADS:
        for key in (f"{_PREFIX}{head}.weight", f"{_PREFIX}{head}.out_proj.weight"):
            if key in shapes:
                return Task.RERANKING if shapes[key][0] == 1 else Task.CLASSIFICATION
    return None


def _root(text: str, cached_only: bool = False) -> Path | None:
    """The directory ``text`` names: a local path, else a hub id's snapshot in the HF cache."""
    path = Path(text).expanduser()
    if path.exists():
        return path.resolve()
    hub_id = hub.parse(text)
    if hub_id is None:
        if cached_only:
            return None
        raise ModelError(f"{text}: adapter directory does not exist")
    if cached_only:
        found = hub.cached(hub_id)
        return None if found is None else found[0]
    return hub.snapshot(hub_id)[0]


def locate(text: str) -> Adapter:
    """The checked adapter ``text`` names: a PEFT directory, or a hub id through the HF cache."""
    hub_id = None if Path(text).expanduser().exists() else hub.parse(text)
    origin: dict[str, Any] = {}
    if hub_id is not None:
        root, commit = hub.snapshot(hub_id)
        ref, name = f"{hub_id.repo_id}@{commit}", hub_id.name
        origin = {"repo_id": hub_id.repo_id, "revision": hub_id.revision, "commit": commit}
    else:
        found = _root(text)
        assert found is not None
        root, ref, name = found, found.name, found.name  # a name, not the builder's path (see ModelSource.shipped_ref)
    if not root.is_dir():
        raise ModelError(f"{text}: not a directory; pass a PEFT adapter directory ({CONFIG} and {WEIGHTS})")
    return inspect(root, ref, slug(name), directory_digest(root), origin)


def source(base: ModelSource, text: str, name: str | None, task: Task | None) -> ModelSource:
    """The ModelSource of ``base`` with the adapter ``text`` merged in: the merged directory,
    checked like any model, described with the base's and the adapter's digests."""
    adapter = locate(text)
    root = merged(base.path, base.digest, adapter, StageCache(default_dir()), base.trust_remote_code)
    merged_source = directory.source(
        root,
        base.kind,
        name or f"{base.name}-{adapter.name}",
        False,
        base.trust_remote_code,
        task,
        ref=str(base.ref or base.path),
        origin={**base.origin, "base_digest": f"sha256:{base.digest}", "adapter": adapter.describe()},
    )
    return dataclasses.replace(merged_source, adapter_dir=adapter.path)
