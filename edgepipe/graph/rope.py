"""RoPE for GroupQueryAttention: the cos/sin caches, as transformers computes them.

transformers builds each model's inverse frequencies with ``ROPE_INIT_FUNCTIONS``
(transformers/modeling_rope_utils.py), one function per ``rope_scaling.rope_type``, and multiplies
cos and sin by the ``attention_scaling`` it returns. ``frequencies`` repeats that arithmetic in
float32, step for step, for the types a static table expresses exactly:

- ``default``, ``linear``, ``llama3`` (Llama 3.1/3.2), ``yarn``: fixed frequencies.
- ``dynamic``: transformers rescales only once a sequence grows past ``max_position_embeddings``;
  the bundle's context never does (the cache has that many rows), so the default table is exact.
- ``longrope`` (Phi-3.5, Phi-4-mini): short factors while a forward pass's last position is below
  ``original_max_position_embeddings``, long factors for the whole pass once it is not. The table
  holds both (short rows first) and the graph shifts ``position_ids`` into the long rows when the
  pass's largest position calls for them: the same rule as transformers, per pass. A prompt longer
  than that length is prefilled in chunks by the runtime, where transformers takes it in one pass:
  its first chunks then rotate with the short factors (not exact for such prompts). Phi-3's
  generate() goes further (it recomputes the whole cache with the long factors when a generation
  crosses the switch): no cache kept across steps matches that, and optimum's export (traced with
  the short factors alone) does not either; the fused path is exact below the switch, so it is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

STATIC_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope")


@dataclass(frozen=True)
class Rope:
    inv_freq: np.ndarray  # [rotary_dim / 2] float32
    attention_scaling: float = 1.0  # multiplies cos and sin
    long_inv_freq: np.ndarray | None = None  # longrope: for passes reaching ``switch``
    switch: int = 0  # longrope: original_max_position_embeddings


def rope_type(config: dict[str, Any]) -> str:
    scaling = config.get("rope_scaling") or {}
    return str(scaling.get("rope_type", scaling.get("type")) or "default")


def unsupported(config: dict[str, Any]) -> str | None:
    """Why the model's RoPE is no static cos/sin table, or None."""
    kind = rope_type(config)
    if kind not in STATIC_TYPES:
        return f"rope_scaling type {kind!r} has no static cos/sin table (supported: " + (f"{', '.join(STATIC_TYPES)})")
    return None


def _rotary_dim(config: dict[str, Any], head_dim: int) -> int:
    return int(head_dim * float(config.get("partial_rotary_factor", 1.0)))


def _default(base: float, dim: int) -> np.ndarray:
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return np.float32(1.0) / np.power(np.float32(base), exponents)


def frequencies(config: dict[str, Any], head_dim: int) -> Rope:
    """The inverse frequencies and attention scaling transformers uses for this config."""
    kind, scaling = rope_type(config), config.get("rope_scaling") or {}
    base = float(config.get("rope_theta", 10000.0))
    dim = _rotary_dim(config, head_dim)
    f32 = np.float32
    inv_freq = _default(base, dim)
    if kind == "linear":
        return Rope(inv_freq / f32(scaling["factor"]))
    if kind == "llama3":
        factor = f32(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old / low, old / high
        # torch evaluates ``scalar / tensor`` as reciprocal(tensor) * scalar
        wavelen = np.reciprocal(inv_freq) * f32(2 * math.pi)
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (np.reciprocal(wavelen) * f32(old) - f32(low)) / f32(high - low)
        smoothed = (f32(1) - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return Rope(np.where(medium, smoothed, scaled).astype(f32))
    if kind == "yarn":
        return _yarn(config, scaling, base, dim)
    if kind == "longrope":
        return _longrope(config, scaling, base, dim)
    return Rope(inv_freq)  # default, and dynamic within max_position_embeddings


def _yarn(config: dict[str, Any], scaling: dict[str, Any], base: float, dim: int) -> Rope:
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings") or config["max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = scaling.get("attention_factor")
    if attention is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers: prevent singularity
    f32 = np.float32
    ramp = np.clip((np.arange(dim // 2, dtype=f32) - f32(low)) / f32(high - low), 0, 1)
    extrapolation = f32(1) - ramp.astype(f32)
    pos_freqs = np.power(f32(base), np.arange(0, dim, 2).astype(f32) / f32(dim))
    inv_extrapolation = f32(1.0) / pos_freqs
    inv_interpolation = f32(1.0) / (f32(factor) * pos_freqs)
    inv_freq = inv_interpolation * (f32(1) - extrapolation) + inv_extrapolation * extrapolation
    return Rope(inv_freq.astype(f32), float(attention))


def _longrope(config: dict[str, Any], scaling: dict[str, Any], base: float, dim: int) -> Rope:
    factor: Any = scaling.get("factor")
    original = config.get("original_max_position_embeddings")
    if original:  # Phi-3: the ratio of the two lengths, not ``factor``
        factor = config["max_position_embeddings"] / original
    else:
        original = config["max_position_embeddings"]
    attention = scaling.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    shape = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    powers = np.power(np.float32(base), shape)

    def inv(factors: list[float]) -> np.ndarray:
        return np.float32(1.0) / (np.asarray(factors, np.float32) * powers)

    return Rope(inv(scaling["short_factor"]), float(attention), inv(scaling["long_factor"]), int(original))


def rope_caches(config: dict[str, Any], head_dim: int, prefix: str, dtype: int) -> tuple[list[Any], list[Any], str]:
    """Nodes (and their small constants) computing ``{prefix}/cos_cache`` and ``sin_cache``
    [rows, rotary_dim/2] (positions x inv_freq, in float32, times the attention scaling), and the
    name of the position ids GroupQueryAttention reads (``position_ids``, or for longrope the ids
    shifted into the long rows).

    Computed in the graph rather than stored: onnxruntime folds them into constants when it loads
    the model, and the file stays 2.1 MB smaller at 8192 positions and head size 64.
    """
    from onnx import TensorProto, helper, numpy_helper

    rope = frequencies(config, head_dim)
    limit = int(config["max_position_embeddings"])
    parts = [(rope.inv_freq, limit)]
    if rope.long_inv_freq is not None and limit > rope.switch:
        parts = [(rope.inv_freq, rope.switch), (rope.long_inv_freq, limit)]
    inits = [
        numpy_helper.from_array(np.array(0.0, np.float32), f"{prefix}/rope_start"),
        numpy_helper.from_array(np.array(1.0, np.float32), f"{prefix}/rope_delta"),
        numpy_helper.from_array(np.array(rope.attention_scaling, np.float32), f"{prefix}/mscale"),
    ]
    nodes = []
    for i, (inv_freq, rows) in enumerate(parts):
        p = f"{prefix}/rope{i}"
        inits += [
            numpy_helper.from_array(inv_freq.astype(np.float32)[None, :], f"{p}/inv_freq"),
            numpy_helper.from_array(np.array(float(rows), np.float32), f"{p}/limit"),
        ]
        nodes += [
            helper.make_node(
                "Range",
                [f"{prefix}/rope_start", f"{p}/limit", f"{prefix}/rope_delta"],
                [f"{p}/positions"],
                name=f"{p}/Range",
            ),
            helper.make_node(
                "Unsqueeze", [f"{p}/positions", f"{prefix}/axis1"], [f"{p}/positions_2d"], name=f"{p}/Unsqueeze"
            ),
            helper.make_node("Mul", [f"{p}/positions_2d", f"{p}/inv_freq"], [f"{p}/freqs"], name=f"{p}/Mul"),
        ]
    freqs = f"{prefix}/rope0/freqs"
    if len(parts) > 1:
        freqs = f"{prefix}/freqs"
        nodes.append(
            helper.make_node(
                "Concat", [f"{prefix}/rope0/freqs", f"{prefix}/rope1/freqs"], [freqs], axis=0, name=f"{prefix}/Concat"
            )
        )
    for t, op in (("cos", "Cos"), ("sin", "Sin")):
        out = f"{prefix}/{t}_cache"
        scaled = rope.attention_scaling != 1.0
        cast = dtype != TensorProto.FLOAT
        raw = f"{prefix}/{t}_raw" if scaled or cast else out
        nodes.append(helper.make_node(op, [freqs], [raw], name=f"{prefix}/{op}"))
        if scaled:
            nodes.append(
                helper.make_node(
                    "Mul", [raw, f"{prefix}/mscale"], [f"{prefix}/{t}32" if cast else out], name=f"{prefix}/Mul_{t}"
                )
            )
        if cast:
            nodes.append(
                helper.make_node(
                    "Cast", [f"{prefix}/{t}32" if scaled else raw], [out], to=dtype, name=f"{prefix}/Cast_{t}"
                )
            )
    if len(parts) == 1:
        return nodes, inits, "position_ids"
    # longrope: a pass whose largest position reaches the switch reads the long rows (after the
    # ``switch`` short ones) for all its positions, as transformers recomputes inv_freq per pass.
    inits.append(numpy_helper.from_array(np.array(rope.switch - 1, np.int64), f"{prefix}/last_short"))
    inits.append(numpy_helper.from_array(np.array(rope.switch, np.int64), f"{prefix}/long_offset"))
    nodes += [
        helper.make_node(
            "ReduceMax", ["position_ids"], [f"{prefix}/max_position"], keepdims=0, name=f"{prefix}/ReduceMax"
        ),
        helper.make_node(
            "Greater", [f"{prefix}/max_position", f"{prefix}/last_short"], [f"{prefix}/long"], name=f"{prefix}/Greater"
        ),
        helper.make_node(
            "Cast", [f"{prefix}/long"], [f"{prefix}/long64"], to=TensorProto.INT64, name=f"{prefix}/Cast_long"
        ),
        helper.make_node(
            "Mul", [f"{prefix}/long64", f"{prefix}/long_offset"], [f"{prefix}/offset"], name=f"{prefix}/Mul_offset"
        ),
        helper.make_node(
            "Add", ["position_ids", f"{prefix}/offset"], [f"{prefix}/rope_positions"], name=f"{prefix}/Add_offset"
        ),
    ]
    return nodes, inits, f"{prefix}/rope_positions"
