"""Text generation: the runtime config a decoder's bundle carries, read from the model at build time."""

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
# A user message that no template can mistake for anything else; the rendering is split at it.
SENTINEL = "\x1fEDGEPIPE-USER-MESSAGE\x1f"
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
        raise ModelError(
            f"{onnx_model}: no past_key_values inputs; export it with task "
            "text-generation-with-past"
        )
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


def max_length(config: dict[str, Any], model_dir: Path) -> int:
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    raise ModelError(
        f"{model_dir / 'config.json'}: no max_position_embeddings or n_positions; "
        "cannot tell the model's context length"
    )


def chat_template(model_dir: Path) -> tuple[str, str] | None:
    """The chat template rendered around one user message, as (prefix, suffix); None without one.

    Rendered here with transformers so the bundle needs no Jinja. The prefix keeps whatever special
    tokens the template writes (a BOS included), so the runtime encodes prefix + prompt + suffix
    without adding special tokens, as apply_chat_template(tokenize=True) does.
    """
    from transformers import AutoTokenizer

    with quiet():
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        with quiet():
            rendered = tokenizer.apply_chat_template(
                [{"role": "user", "content": SENTINEL}], tokenize=False, add_generation_prompt=True
            )
    except Exception as exc:  # a template's own raise_exception() or a Jinja error
        log.warning("%s: chat template does not render one user message: %s", model_dir, exc)
        return None
    if not isinstance(rendered, str) or rendered.count(SENTINEL) != 1:
        log.warning("%s: chat template does not show the user message verbatim once", model_dir)
        return None
    prefix, suffix = rendered.split(SENTINEL)
    return prefix, suffix


def runtime_config(
    model_dir: Path,
    onnx_model: Path,
    threads: int,
    inter_op: int,
    providers: Sequence[str],
) -> GenerationConfig:
    """The bundle's runtime.json for a decoder exported to ``onnx_model`` from ``model_dir``."""
    config = _json(model_dir / "config.json")
    layers, heads, head_dim = kv_shape(onnx_model, config)
    chat = chat_template(model_dir)
    return GenerationConfig(
        num_layers=layers,
        num_kv_heads=heads,
        head_dim=head_dim,
        eos_token_ids=eos_token_ids(model_dir),
        max_length=max_length(config, model_dir),
        chat_prefix=chat[0] if chat else None,
        chat_suffix=chat[1] if chat else None,
        intra_op_threads=threads,
        inter_op_threads=inter_op,
        providers=tuple(providers),
    )
