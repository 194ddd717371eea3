"""The KV cache's element type: int8 with per-channel scales, around float32 GroupQueryAttention.

onnxruntime's CPU GroupQueryAttention (1.32) stores its cache in a type of its own (``T_CACHE``):
int8 with static scales (``k_quant_type``/``v_quant_type`` PER_CHANNEL, one scale per KV head and
channel, inputs ``k_scale``/``v_scale``) while the attention itself computes in float32. A decode
step then reads a quarter of the bytes. Measured with 1.32 on x86 (1 thread, 30 layers' buffers of
2,080 positions, SmolLM2-135M's 3 KV heads x 64): the attention of one token took 0.70x the float32
cache's time after 64 positions, 0.62x after 512, 0.57x after 2,048. A float16 cache is no use
there: the kernel converts the whole buffer each step (7.4x slower after 64 positions, 1.41x after
2,048), and float16 attention (``T`` float16 too) measured 1.03x to 1.34x.

The scales come from the model itself: the calibration texts' keys and values (``present.*`` of a
prompt pass). Keys are stored after RoPE, which rotates each channel pair (i, i + head_dim/2) by
a position's angle, so a key channel's bound is its pair's largest norm, true at any position;
values take their channel's largest magnitude. Both get ``HEADROOM`` for what the texts missed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime.kvcache import LAST, LOGITS_TO_KEEP, PAST, PRESENT, keeps_last_logits

FLOAT32, INT8 = "float32", "int8"
ELEM_TYPES = {FLOAT32: 1, INT8: 3}  # TensorProto's numbering
# Scales cover 1.25x the largest key/value the calibration texts produced: a later text's
# larger values are stored unclipped, at a quarter of a bit less resolution.
HEADROOM = 1.25
Feeds = Callable[[], Iterable[Mapping[str, np.ndarray]]]
Scales = dict[str, tuple[np.ndarray, np.ndarray]]  # layer -> key, value scales [1, kv, 1, head_dim]


def cache_values(graph: Any) -> list[Any]:
    """The graph's cache inputs and outputs (ValueInfoProto)."""
    return [v for v in [*graph.input, *graph.output] if v.name.startswith(PAST) or v.name.startswith(PRESENT)]


def declared(model: Any) -> str:
    """The element type the model declares for its cache (float32 when it has none)."""
    values = cache_values(model.graph)
    names = {number: name for name, number in ELEM_TYPES.items()}
    return names.get(values[0].type.tensor_type.elem_type, "other") if values else FLOAT32


def why_not(model: Any) -> str | None:
    """Why the cache of ``model`` cannot change type; None when every past input feeds a
    GroupQueryAttention (an unfused attention would Concat an int8 past with a float present)."""
    graph = model.graph
    past = {v.name for v in graph.input if v.name.startswith(PAST)}
    if not past:
        return "the model has no past_key_values inputs"
    readers = [n for n in graph.node if past.intersection(n.input)]
    others = sorted({n.op_type for n in readers if n.op_type != "GroupQueryAttention"})
    if others or not readers:
        return (
            f"its cache feeds {', '.join(others) or 'nothing'}, not GroupQueryAttention alone "
            "(the attention rewrite skipped this model)"
        )
    return None


def calibrate(path: Path, feeds: Feeds) -> Scales:
    """Per-layer key and value scales of the float32-cache model at ``path`` over ``feeds``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs() if o.name.startswith(PRESENT)]
    # The last position's logits alone, where the model can (a vocabulary x text of floats else).
    last = {LOGITS_TO_KEEP: LAST} if keeps_last_logits(session) else {}
    bounds: dict[str, np.ndarray] = {}
    for feed in feeds():
        for name, value in zip(names, session.run(names, {**feed, **last}), strict=True):
            x = np.abs(np.asarray(value, np.float32))  # [1, kv, positions, head_dim]
            if name.endswith(".key"):
                half = x.shape[-1] // 2
                pair = np.sqrt(x[..., :half] ** 2 + x[..., half:] ** 2)
                x = np.concatenate([pair, pair], axis=-1)
            peak = x.max(axis=2, keepdims=True)
            bounds[name] = np.maximum(bounds[name], peak) if name in bounds else peak
    if not bounds:
        raise ValueError("no calibration text reached the model")
    scales: Scales = {}
    for name, bound in bounds.items():
        layer = name[len(PRESENT) :].rsplit(".", 1)[0]
        # A channel that stayed 0 still needs a positive scale.
        scale = (np.maximum(bound, 1e-6) * HEADROOM / 127).astype(np.float32)
        key, value = scales.get(layer, (scale, scale))
        scales[layer] = (scale, value) if name.endswith(".key") else (key, scale)
    return scales


def set_int8_cache(model: Any, scales: Scales) -> None:
    """Declare the cache int8 on ``model`` (changed in place), each attention reading its
    layer's ``scales``; why_not(model) must be None."""
    from onnx import helper, numpy_helper

    graph = model.graph
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        layer = node.input[3][len(PAST) :].rsplit(".", 1)[0]  # past_key_values.N.key
        names = [f"edgepipe_kv/{layer}/{kind}_scale" for kind in ("k", "v")]
        for name, array in zip(names, scales[layer], strict=True):
            graph.initializer.append(numpy_helper.from_array(array, name))
        # Inputs 10-11 (attention_bias, head_sink) stay empty; 12-13 are k_scale and v_scale.
        inputs = [*node.input, *[""] * (12 - len(node.input))][:12] + names
        del node.input[:]
        node.input.extend(inputs)
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                helper.make_attribute("kv_cache_bit_width", 8),
            ]
        )
    values = cache_values(graph)
    for value in values:
        value.type.tensor_type.elem_type = ELEM_TYPES[INT8]
    named = {v.name for v in values}
    for v in [v for v in graph.value_info if v.name in named]:  # shape inference's old types
        graph.value_info.remove(v)


def apply(path: Path, dtype: str, feeds: Feeds | None) -> dict[str, Any]:
    """The cache of the model file at ``path`` in ``dtype``, its scales from ``feeds``; the stage
    record's ``kv_cache`` entry."""
    import onnx

    if dtype not in ELEM_TYPES:
        raise ValueError(f"kv_cache must be one of {', '.join(ELEM_TYPES)}, not {dtype!r}")
    model = onnx.load(str(path))
    have = declared(model)
    reason = why_not(model) if dtype != have else None
    if dtype == have or reason is not None:
        return {"dtype": have, "skipped": reason}
    if dtype != INT8 or feeds is None:
        raise ValueError(f"a {have} cache becomes {dtype} only from float32 with calibration texts")
    scales = calibrate(path, feeds)
    set_int8_cache(model, scales)
    onnx.save(model, str(path))
    peaks = [float(s.max()) * 127 / HEADROOM for pair in scales.values() for s in pair]
    return {"dtype": dtype, "skipped": None, "scales": "per channel", "largest": max(peaks)}
