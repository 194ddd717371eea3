"""A decoder's runtime config, read from the model at build time: the KV cache's shape, EOS ids,
context length and the model's own chat template, checked against transformers' rendering."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..runtime.generator import GenerationConfig
from ..stages.export import quiet

log = logging.getLogger(__name__)
_PAST = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable: {exc}") from None
    return data if isinstance(data, dict) else {}


def kv_shape(onnx_model: Path, config: dict[str, Any]) -> tuple[int, int, int]:
    """(layers, kv heads, head dim) from the model's past_key_values inputs.

    The inputs' static dims say it for every architecture alike; config.json fills in a dim that
    the export left symbolic.
    """
    import onnx

    graph = onnx.load(str(onnx_model), load_external_data=False).graph
    layers: set[int] = set()
    dims: tuple[int, int] | None = None
    for value in graph.input:
        match = _PAST.match(value.name)
        if not match:
            continue
        layers.add(int(match.group(1)))
        shape = value.type.tensor_type.shape.dim
        if dims is None and len(shape) == 4:
            dims = (shape[1].dim_value, shape[3].dim_value)
    if not layers or dims is None:
        raise ModelError(f"{onnx_model}: no past_key_values inputs; export it with task text-generation-with-past")
    if sorted(layers) != list(range(len(layers))):
        raise ModelError(f"{onnx_model}: past_key_values layers are not 0..{len(layers) - 1}")
    heads, head_dim = dims
    if not heads:
        heads = int(config.get("num_key_value_heads") or config.get("num_attention_heads") or 0)
    if not head_dim:
        attention = config.get("num_attention_heads") or config.get("n_head") or 0
        hidden = config.get("hidden_size") or config.get("n_embd") or 0
        head_dim = int(config.get("head_dim") or (hidden // attention if attention else 0))
    if not heads or not head_dim:
        raise ModelError(f"{onnx_model}: cannot tell the KV cache's heads and head size")
    return len(layers), heads, head_dim


def _ids(value: object) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def eos_token_ids(model_dir: Path) -> tuple[int, ...]:
    """generation_config.json's EOS ids, then config.json's (each an int or a list), deduplicated."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        ids += _ids(_json(model_dir / name).get("eos_token_id"))
    return tuple(dict.fromkeys(ids))


# Models whose positions are an attention bias (ALiBi) have no table to overrun and no limit in
# config.json: the tokenizer's model_max_length, else the context they were trained at.
TRAINED_CONTEXT = {"bloom": 2048}


def _positive(value: object) -> int:
    """``value`` if it is a positive int, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# Families whose published config.json leaves the context out (tiiuae/falcon-7b): transformers'
# config class default is what the model runs with.
CONFIG_DEFAULT_CONTEXT = ("falcon",)


def _config_default(config: dict[str, Any]) -> int:
    """The context transformers' config class gives a CONFIG_DEFAULT_CONTEXT model, or 0."""
    from transformers import AutoConfig

    if config.get("model_type") not in CONFIG_DEFAULT_CONTEXT:
        return 0
    try:
        filled = AutoConfig.for_model(str(config.get("model_type")))
    except (ValueError, KeyError):
        return 0
    return _positive(getattr(filled, "max_position_embeddings", None))


def max_length(config: dict[str, Any], model_dir: Path) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        if _positive(config.get(key)):
            return _positive(config.get(key))
    if _config_default(config):
        return _config_default(config)
    trained = TRAINED_CONTEXT.get(str(config.get("model_type")))
    if trained:
        stated = _positive(_json(model_dir / "tokenizer_config.json").get("model_max_length"))
        return stated if 0 < stated < 1 << 20 else trained  # 1e30 in transformers: no limit
    raise ModelError(
        f"{model_dir / 'config.json'}: no max_position_embeddings or n_positions; "
        "cannot tell the model's context length"
    )


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    with quiet():
        return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def chat_template(model_dir: Path, tokenizer: Any = None) -> tuple[str | dict[str, str], dict[str, Any]] | None:
    """The model's chat template source (tokenizer_config.json's, chat_template.jinja, or a GGUF's,
    as transformers loads it) and the special tokens it sees; None without one."""
    tokenizer = tokenizer or _tokenizer(model_dir)
    source = getattr(tokenizer, "chat_template", None)
    if isinstance(source, dict):
        source = {str(k): str(v) for k, v in source.items()}
    elif not isinstance(source, str) or not source:
        return None
    return source, dict(tokenizer.special_tokens_map)


def checked_chat_template(
    model_dir: Path, tokenizer: Any = None
) -> tuple[str | dict[str, str] | None, dict[str, Any], str | None]:
    """(template, special tokens, None) when the bundle's renderer agrees with transformers on the
    check conversations, else (None, {}, why chat is off). ModelError for a template the sandbox
    refuses (it reaches for internals or files, or runs past its bounds)."""
    from ..runtime.assistant.template import ChatTemplate, TemplateError, TemplateRefused
    from .chat_template_check import check

    tokenizer = tokenizer or _tokenizer(model_dir)
    found = chat_template(model_dir, tokenizer)
    if found is None:
        return None, {}, "this model has no chat template"
    source, special = found
    try:
        template = ChatTemplate(source, special)
    except TemplateRefused as exc:
        raise ModelError(f"{model_dir}: the chat template is refused: {exc}") from None
    except TemplateError as exc:
        return None, {}, str(exc)
    reason = check(tokenizer, template, str(model_dir))
    return (None, {}, reason) if reason else (source, special, None)


def runtime_config(
    model_dir: Path,
    onnx_model: Path,
    threads: int,
    inter_op: int,
    providers: Sequence[str],
    ram_mb: float | None = None,
) -> GenerationConfig:
    """The bundle's runtime.json for a decoder exported to ``onnx_model`` from ``model_dir``;
    ``ram_mb``, the target's memory budget, caps the default context by its KV cache."""
    config = _json(model_dir / "config.json")
    layers, heads, head_dim = kv_shape(onnx_model, config)
    tokenizer = _tokenizer(model_dir)
    template, special_tokens, reason = checked_chat_template(model_dir, tokenizer)
    if template is None and reason != "this model has no chat template":
        log.warning("%s: /v1/chat/completions is off: %s", model_dir, reason)
    return GenerationConfig(
        num_layers=layers,
        num_kv_heads=heads,
        head_dim=head_dim,
        eos_token_ids=eos_token_ids(model_dir),
        max_length=max_length(config, model_dir),
        chat_template=template,
        special_tokens=special_tokens,
        chat_off=reason,
        intra_op_threads=threads,
        inter_op_threads=inter_op,
        providers=tuple(providers),
        ram_mb=ram_mb,
    )
