"""Each layer's GroupQueryAttention attributes, read from the model's config.json as transformers
reads them: sliding window (``local_window_size``), rotary or none (``do_rotary``), and ``scale``.
"""

from __future__ import annotations

from typing import Any

from . import attention_variants
from .attention_variants import LOCAL


def window(config: dict[str, Any], layer: int) -> int | None:
    """The layer's sliding window in tokens (transformers: a query sees the last ``window`` keys,
    itself included), or None where it attends to every earlier token."""
    size = config.get("sliding_window")
    if not size or size >= int(config.get("max_position_embeddings") or 0):
        return None  # no window, or one the context never fills
    if config.get("model_type") == "mistral":  # every layer; Mistral ignores layer_types
        return int(size)
    if config.get("use_sliding_window") is False:  # Qwen2, SmolLM3: off unless asked
        return None
    types = config.get("layer_types")
    if types:
        return int(size) if types[layer] == LOCAL else None
    if config.get("model_type") == "qwen2":  # configs saved before layer_types
        return int(size) if layer >= int(config.get("max_window_layers", 28)) else None
    if config.get("model_type") in attention_variants.PATTERNS:  # Gemma 2/3's alternation
        return int(size) if attention_variants.layer_types(config)[layer] == LOCAL else None
    return int(size)  # Phi-3 style: every layer


def rotary(config: dict[str, Any], layer: int) -> bool:
    """Whether the layer rotates q and k (SmolLM3's ``no_rope_layers``: 0 marks a NoPE layer)."""
    flags = config.get("no_rope_layers")
    return bool(flags[layer]) if flags else True


def scale(config: dict[str, Any], head_dim: int) -> float:
    """The factor on q.k: Granite's ``attention_multiplier``, Gemma 2/3's
    1/sqrt(``query_pre_attn_scalar``), else 1/sqrt(head_dim)."""
    multiplier = config.get("attention_multiplier")
    if multiplier is not None:
        return float(multiplier)
    return float((config.get("query_pre_attn_scalar") or head_dim) ** -0.5)


def attributes(config: dict[str, Any], layer: int, head_dim: int) -> dict[str, Any]:
    """GroupQueryAttention's per-layer attributes. ``local_window_size`` is transformers' window:
    onnxruntime 1.32's CPU kernel lets a query see that many keys, itself included
    (tests/graph/test_rope.py checks it against transformers past the window)."""
    size = window(config, layer)
    attrs: dict[str, Any] = {
        "do_rotary": int(rotary(config, layer)),
        "local_window_size": size if size else -1,
        "scale": scale(config, head_dim),
    }
    if config.get("attn_logit_softcapping"):  # Gemma 2: cap x tanh(scores / cap)
        attrs["softcap"] = float(config["attn_logit_softcapping"])
    return attrs
