"""Routed mixture-of-experts layers: onnxruntime's com.microsoft MoE node, and its int4 form QMoE.

The export writes each MoE block as one ``MoE`` node (stages/moe_export.py): router logits in,
the experts' weights as 3-D initializers ([experts, out, in], gate/up interleaved in fc1), and the
node computes, per token, only the top-k experts the router picks. ``quantize`` turns each into
``QMoE`` with blockwise int4 experts; onnxruntime 1.32's CPU kernels (measured here):

- MoE (fp32) takes only interleaved SwiGLU (``swiglu_fusion=1``): "CPU MoE only supports
  interleaved SwiGLU format", so fc1 holds gate/up row pairs; its ``use_sparse_mixer`` did not
  reproduce PhiMoE's routing (max difference 8.4 on a test block), so PhiMoE's routing is
  computed in the graph and fed as logits (moe_export.py).
- QMoE stores each expert's [N, K] weight as MatMulNBits does (uint8 [E, N, K/2], two codes a byte,
  low nibble first), scales [E, N, K/block], zero points [E, N, ceil(blocks/2)]: it matched a numpy
  reference on the dequantized weights to 2e-6. ``block_size`` must divide hidden and inter sizes.
- ``accuracy_level`` 4 lets it use int8 activations, like MatMulNBits.

Calibration reaches every expert: the texts are run through the fp32 model, each MoE node's input
rows are routed as the node routes them (softmax, top-k), and each expert is quantized by GPTQ
on the Hessian of *its own* rows (fc2 on its own SwiGLU activations). An expert no text reached is
rounded to nearest; the record counts both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import external, gptq

MOE, QMOE = "MoE", "QMoE"


def nodes(graph: Any) -> list[Any]:
    """The graph's MoE nodes, in order."""
    return [n for n in graph.node if n.op_type == MOE and n.domain == "com.microsoft"]


def attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def block_for(block: int, *sizes: int) -> int | None:
    """``block``, halved until it divides every size (QMoE needs whole blocks, of 16 or more)."""
    while any(s % block for s in sizes) and block > 16:
        block //= 2
    return None if any(s % block for s in sizes) else block


def routed_inputs(
    model: Any, feeds: Iterable[Mapping[str, np.ndarray]], names: list[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each MoE node's (input rows [T, H], router logits [T, E]) over every position fed."""
    import onnx
    import onnxruntime as ort

    found = {n.name: n for n in nodes(model.graph) if n.name in names}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    wanted = list(dict.fromkeys(t for n in found.values() for t in n.input[:2]))
    known = {o.name for o in probe.graph.output}
    for name in wanted:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, 1, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = external.session(probe, options, ["CPUExecutionProvider"])
    rows: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
    for feed in feeds:
        for name, value in zip(wanted, session.run(wanted, dict(feed)), strict=True):
            rows[name].append(np.asarray(value, np.float32).reshape(-1, value.shape[-1]))
    return {name: (np.concatenate(rows[n.input[0]]), np.concatenate(rows[n.input[1]])) for name, n in found.items()}


def routes(logits: np.ndarray, k: int) -> np.ndarray:
    """[T, k] indices of the experts each token is sent to (softmax is monotonic: top-k logits)."""
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def swiglu(h: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """The node's activation on fc1's interleaved [gate, up] columns."""
    gate, up = h[:, 0::2], h[:, 1::2]
    limit = attrs.get("swiglu_limit")
    if limit is not None:
        gate, up = np.minimum(gate, limit), np.clip(up, -limit, limit)
    alpha, beta = attrs.get("activation_alpha", 1.0), attrs.get("activation_beta", 0.0)
    return gate / (1.0 + np.exp(-alpha * gate)) * (up + beta)


def _constants(graph: Any) -> dict[str, Any]:
    """Initializers by name, and the outputs of Identity nodes over them (the exporter writes an
    Identity for a tensor equal to an earlier one, as every zero bias is)."""
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]
    return inits


def _expert_codes(weight: np.ndarray, rows: np.ndarray | None, bits: int, block: int, damp: float) -> gptq.Quantized:
    """One expert's [out, in] weight: GPTQ on its routed rows where they are enough to pin its
    Hessian down (at least twice its inputs), else round-to-nearest weighted by how strongly
    each input is driven (none reached it: unweighted)."""
    if rows is None or len(rows) == 0:
        return gptq.rtn(weight.T, bits, block)
    x = rows.astype(np.float64)
    if len(rows) < 2 * weight.shape[1]:
        return gptq.rtn(weight.T, bits, block, (x * x).sum(axis=0))
    return gptq.gptq(weight.T, x.T @ x, bits, block, damp=damp)


def _node_codes(
    fc1: np.ndarray, fc2: np.ndarray, bias1: np.ndarray | None, attrs: Mapping[str, Any],
    data: tuple[np.ndarray, np.ndarray] | None, bits: int, block: int, damp: float,
) -> tuple[list[gptq.Quantized], list[gptq.Quantized], int]:  # fmt: skip
    """One node's experts' fc1 and fc2 codes, each from its own routed rows; how many had rows."""
    x, logits = data if data is not None else (None, None)
    chosen = routes(logits, int(attrs["k"])) if logits is not None else None
    codes1, codes2, calibrated = [], [], 0
    for e in range(fc1.shape[0]):
        rows = x[(chosen == e).any(axis=1)] if x is not None and chosen is not None else None
        codes1.append(_expert_codes(fc1[e], rows, bits, block, damp))
        act = None
        if rows is not None and len(rows):
            act = swiglu(rows @ fc1[e].T + (bias1[e] if bias1 is not None else 0.0), attrs)
            calibrated += 1
        codes2.append(_expert_codes(fc2[e], act, bits, block, damp))
    return codes1, codes2, calibrated


def _pack(codes: list[gptq.Quantized], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data, scales, zeros = zip(*(c.packed() for c in codes), strict=True)
    return (
        np.stack([d.reshape(n, -1) for d in data]),
        np.stack([s.reshape(n, -1) for s in scales]),
        np.stack([z.reshape(n, -1) for z in zeros]),
    )


def quantize(
    model: Any, bits: int, block_size: int, accuracy_level: int,
    feeds: Iterable[Mapping[str, np.ndarray]] | None = None, damp: float = 0.1,
    cache: dict[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Every MoE node of ``model`` -> QMoE with ``bits``-bit experts (GPTQ on routed calibration
    rows where ``feeds`` are given); returns counts. The router MatMul is left to the caller."""
    from onnx import helper, numpy_helper

    found = nodes(model.graph)
    if not found:
        return {}
    cache = {} if cache is None else cache  # node -> its experts' codes, for the build's next attempt
    todo = [n.name for n in found if n.name not in cache]
    data = routed_inputs(model, feeds, todo) if feeds is not None and todo else {}
    inits = _constants(model.graph)
    counts = {"moe_nodes": 0, "experts": 0, "experts_calibrated": 0, "block_size": 0}
    replaced: dict[str, Any] = {}
    for node in found:
        attrs = attributes(node)
        fc1, fc2 = external.array(inits[node.input[2]]), external.array(inits[node.input[4]])
        biases = [
            external.array(inits[node.input[i]]) if len(node.input) > i and node.input[i] else None for i in (3, 5)
        ]
        experts, hidden, inter = fc1.shape[0], fc1.shape[2], fc2.shape[2]
        block = block_for(block_size, hidden, inter)
        if block is None:
            continue  # no whole blocks: the node stays float
        if node.name not in cache:
            cache[node.name] = _node_codes(fc1, fc2, biases[0], attrs, data.get(node.name), bits, block, damp)
        codes1, codes2, calibrated = cache[node.name]
        counts["experts_calibrated"] += calibrated
        names = [f"{node.name}_{part}" for part in ("fc1_q", "fc1_s", "fc1_z", "fc2_q", "fc2_s", "fc2_z")]
        arrays = [*_pack(codes1, fc1.shape[1]), *_pack(codes2, fc2.shape[1])]
        for array, name in zip(arrays, names, strict=True):
            model.graph.initializer.append(numpy_helper.from_array(array, name))
        bias_names = [node.input[i] if b is not None and np.any(b) else "" for i, b in zip((3, 5), biases, strict=True)]
        inputs = [node.input[0], node.input[1], names[0], names[1], bias_names[0], names[3], names[4],
                  bias_names[1], "", "", "", names[2], names[5]]  # fmt: skip
        extra: dict[str, Any] = {"expert_weight_bits": bits, "block_size": block}
        if accuracy_level:
            extra["accuracy_level"] = accuracy_level
        replaced[node.name] = helper.make_node(
            QMOE, inputs, list(node.output), name=f"{node.name}_Q{bits}", domain="com.microsoft",
            **attrs, **extra,
        )  # fmt: skip
        counts["moe_nodes"] += 1
        counts["experts"] += experts
        counts["block_size"] = block
    new = [replaced.get(n.name, n) for n in model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(new)
    used = {i for n in model.graph.node for i in n.input}
    for init in [t for t in model.graph.initializer if t.name not in used]:
        model.graph.initializer.remove(init)
    return counts


def parameters(model: Any) -> dict[str, int]:
    """Weights in total and read per token (a token reads k of each MoE node's experts)."""
    inits = _constants(model.graph)
    total = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    inactive = 0
    for node in nodes(model.graph):
        k = int(attributes(node)["k"])
        for i in (2, 3, 4, 5):
            if len(node.input) > i and node.input[i] in inits:
                dims = inits[node.input[i]].dims
                inactive += int(np.prod(dims)) // dims[0] * (dims[0] - k)
    return {"parameters": total, "active_parameters": total - inactive}
