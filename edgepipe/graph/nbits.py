"""Weight MatMuls -> MatMulNBits with per-node bits, from codes made by ``gptq`` (RTN or GPTQ).

The calibration statistics come from the fp32 ONNX graph itself: every weight MatMul's input is
added as a graph output and X^T X is summed over the calibration tokens, so it works for any
architecture the export produced (packed q/k/v and gate/up MatMuls share one input and one
Hessian).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import progress
from . import external, gptq

# GPTQ's settings, measured on the off-grid SmolLM2-135M, all MatMuls 4-bit, mean KL to fp32 on
# held-out paragraphs (15 calibration texts): plain column order with damping 0.01 0.164, with 0.1
# 0.145, act-order with 0.1 0.120. With the 35 built-in texts, act-order: damping 0.1 0.116 (0.137
# on the built-in evaluation texts), 0.3 0.117 (0.149). A few thousand calibration tokens leave
# X^T X of a 1536-wide input badly conditioned; damping keeps GPTQ from fitting their noise.
DAMP = 0.1


def weight_matmuls(graph: Any) -> list[Any]:
    """MatMul nodes whose B is a 2-D float initializer, in graph order."""
    from onnx import TensorProto

    inits = {t.name: t for t in graph.initializer}
    return [
        node
        for node in graph.node
        if node.op_type == "MatMul"
        and node.input[1] in inits
        and len(inits[node.input[1]].dims) == 2
        and inits[node.input[1]].data_type == TensorProto.FLOAT
    ]


def hessians(
    model: Any,
    feeds: Iterable[Mapping[str, np.ndarray]],
    names: Sequence[str] | None = None,
    threads: int = 0,
) -> dict[str, np.ndarray]:
    """X^T X (float64 [K, K]) of each weight MatMul's input (or of ``names``), summed over every
    position fed (each text's share computed in float32)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if names is None:
        names = list(dict.fromkeys(n.input[0] for n in weight_matmuls(probe.graph)))
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings are about the probe graph, not the model
    options.intra_op_num_threads = threads
    # Basic optimisation only: full fusion could fold a probed tensor into a fused kernel.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = external.session(probe, options, ["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    texts = list(feeds)
    with progress.task(f"calibration pass ({len(names)} MatMul inputs)", len(texts)) as advance:
        for feed in texts:
            for name, value in zip(names, session.run(names, dict(feed)), strict=True):
                # One text's X^T X in float32 (2.6-3x faster than float64 here; the GPTQ codes of two
                # SmolLM2 MatMuls came out identical), summed over texts in float64.
                x = np.asarray(value, dtype=np.float32).reshape(-1, value.shape[-1])
                sums[name] = sums.get(name, 0.0) + (x.T @ x).astype(np.float64)
            advance(1)
    return sums


Codes = dict[tuple[str, int], gptq.Quantized]


def quantize(
    graph: Any,
    bits: Mapping[str, int],
    block: int,
    accuracy_level: int,
    codes: Codes | None = None,
) -> dict[str, int]:
    """Replace each weight MatMul named in ``bits`` (node name -> 4 or 8) by MatMulNBits.

    Each (weight, bits) takes its codes from ``codes`` (e.g. gptq_codes), or is rounded to
    nearest with a searched clip when they have none; those are added to ``codes``, so trying
    several precision plans quantizes every weight once per bit width.
    """
    from onnx import helper, numpy_helper

    codes = {} if codes is None else codes

    inits = {t.name: t for t in graph.initializer}
    counts = {4: 0, 8: 0}
    replaced: dict[str, Any] = {}
    done: dict[tuple[str, int], list[str]] = {}
    for node in weight_matmuls(graph):
        nbits = bits.get(node.name)
        if nbits is None:
            continue
        name = node.input[1]
        weight = external.array(inits[name])
        k, n = weight.shape
        key = (name, nbits)
        if key not in done:
            if key not in codes:
                codes[key] = gptq.rtn(weight, nbits, block)
            data, scales, zeros = codes[key].packed()
            names = [f"{name}_Q{nbits}", f"{name}_Q{nbits}_scales", f"{name}_Q{nbits}_zp"]
            for array, init_name in zip((data, scales, zeros), names, strict=True):
                graph.initializer.append(numpy_helper.from_array(array, init_name))
            done[key] = names
        attrs: dict[str, Any] = {"K": k, "N": n, "bits": nbits, "block_size": block}
        if accuracy_level:
            attrs["accuracy_level"] = accuracy_level
        replaced[node.name] = helper.make_node(
            "MatMulNBits",
            [node.input[0], *done[key]],
            list(node.output),
            name=f"{node.name}_Q{nbits}",
            domain="com.microsoft",
            **attrs,
        )
        counts[nbits] += 1
    nodes = [replaced.get(node.name, node) for node in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for node in graph.node for i in node.input}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return {"int4": counts[4], "int8": counts[8]}


def decoder_feeds(ids: Sequence[Sequence[int]], inputs: Sequence[Any]) -> Iterable[dict[str, np.ndarray]]:
    """Full-sequence feeds (an empty KV cache) for a decoder export's ``inputs``, one text each."""
    empties: dict[str, np.ndarray] = {}
    for value in inputs:
        if value.name.startswith("past_key_values."):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            if len(dims) != 4 or not dims[1] or not dims[3]:
                raise ValueError(f"{value.name}: KV heads or head size not stated in the graph")
            empties[value.name] = np.zeros((1, dims[1], 0, dims[3]), np.float32)
    names = {value.name for value in inputs}
    for seq in ids:
        feed: dict[str, np.ndarray] = {"input_ids": np.asarray([list(seq)], np.int64)}
        if "attention_mask" in names:
            feed["attention_mask"] = np.ones((1, len(seq)), np.int64)
        if "position_ids" in names:
            feed["position_ids"] = np.arange(len(seq), dtype=np.int64)[None, :]
        feed.update(empties)
        yield feed


def gptq_codes(
    model: Any,
    feeds: Callable[[], Iterable[Mapping[str, np.ndarray]]],
    bits: int,
    block: int,
    budget_bytes: int = 1 << 30,
) -> Codes:
    """GPTQ codes at ``bits`` for every weight MatMul of ``model`` (left unchanged).

    The Hessians of at most ``budget_bytes`` (as float64) are held at once: the calibration
    texts are run again for each share of the MatMuls, so memory stays bounded on large models.
    """

    inits = {t.name: t for t in model.graph.initializer}
    groups: dict[str, list[Any]] = {}
    for node in weight_matmuls(model.graph):
        groups.setdefault(node.input[0], []).append(node)
    sizes = {name: int(inits[nodes[0].input[1]].dims[0]) ** 2 * 8 for name, nodes in groups.items()}
    chunks: list[list[str]] = [[]]
    for name in groups:
        if chunks[-1] and sum(sizes[n] for n in chunks[-1]) + sizes[name] > budget_bytes:
            chunks.append([])
        chunks[-1].append(name)
    codes: Codes = {}
    total = len({n.input[1] for nodes in groups.values() for n in nodes})
    for chunk in chunks:
        stats = hessians(model, feeds(), chunk)
        with progress.task(f"GPTQ {bits}-bit", total) as advance:
            advance(len(codes))
            for name in chunk:
                for node in groups[name]:
                    key = (node.input[1], bits)
                    if key not in codes:
                        weight = external.array(inits[node.input[1]])
                        codes[key] = gptq.gptq(weight, stats[name], bits, block, damp=DAMP, act_order=True)
                        advance(1)
        del stats
    return codes
