"""int4 (or int8) blockwise weight-only quantization of a decoder for onnxruntime's CPU kernels.

- Every MatMul with a constant weight becomes MatMulNBits (onnxruntime's MatMulNBitsQuantizer);
  GPT-2's Gemm layers are turned into MatMul + Add first so they are quantized too.
- The token embedding table becomes GatherBlockQuantized. When the lm_head is tied to it (the
  export stage left it as Transpose(table)), both read ONE packed initializer: MatMulNBits' B is
  [vocab, hidden / block, block * bits / 8] uint8, which GatherBlockQuantized reads as uint8 data
  quantized along its last axis; its scales come through an Unsqueeze, since GatherBlockQuantized
  wants scales of the data's rank and MatMulNBits refuses that shape. Measured on onnxruntime 1.32
  CPU: both ops then decode the same bytes exactly (the Gather matched the dequantized table to 0.0).
- The table is always quantized symmetrically: MatMulNBits and GatherBlockQuantized pack zero points
  differently, so a shared table cannot carry them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog.config import WeightOnly
from ..errors import StageError
from . import external, moe, nbits, tied

Feeds = Callable[[], Iterable[Mapping[str, np.ndarray]]]


@dataclass(frozen=True)
class Packed:
    """A [K, N] weight in MatMulNBits layout (per output column, blocks along K)."""

    data: np.ndarray  # uint8 [N, K / block, block * bits / 8]
    scales: np.ndarray  # float32 [N, K / block]


def pack(weight: np.ndarray, bits: int, block_size: int) -> Packed:
    """Symmetric blockwise quantization of ``weight`` [K, N], as MatMulNBits stores it."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    k, n = weight.shape
    blocks = (k + block_size - 1) // block_size
    data = np.zeros((n, blocks, block_size * bits // 8), dtype=np.uint8)
    scales = np.zeros((n * blocks,), dtype=np.float32)
    zero_points = np.zeros((n * ((blocks * bits + 7) // 8),), dtype=np.uint8)
    quantize = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    quantize(data, np.ascontiguousarray(weight, dtype=np.float32), scales, zero_points, block_size, n, k, True)
    return Packed(data, scales.reshape(n, blocks))


def gemm_to_matmul(graph: Any) -> int:
    """Gemm(A, W, bias) with a constant W -> MatMul + Add, which MatMulNBits can take; returns how
    many were rewritten (GPT-2's Conv1D layers export as Gemm)."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if node.op_type != "Gemm" or node.input[1] not in inits or not plain or attrs.get("transA"):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB"):
            array = external.array(inits[weight]).T
            weight = f"{weight}_t"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), weight))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}_mm"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    if count:  # a transposed copy replaced the original when transB was set
        used = {i for n in graph.node for i in n.input}
        for t in [t for t in graph.initializer if t.name not in used]:
            graph.initializer.remove(t)
    return count


def _gather(node: Any, data: str, scales: str, bits: int, block_size: int, hidden: int) -> list:
    """GatherBlockQuantized over [vocab, blocks, block*bits/8] data, reshaped back to [.., hidden]."""
    from onnx import helper

    out = node.output[0]
    return [
        helper.make_node(
            "Unsqueeze",
            [scales, f"{node.name}_axes"],
            [f"{node.name}_scales3"],
            name=f"{node.name}_scales",
        ),
        helper.make_node(
            "GatherBlockQuantized",
            [data, node.input[1], f"{node.name}_scales3"],
            [f"{out}_blocks"],
            name=f"{node.name}_Q{bits}",
            domain="com.microsoft",
            bits=bits,
            block_size=block_size,
            gather_axis=0,
            quantize_axis=2,
        ),
        helper.make_node("Reshape", [f"{out}_blocks", f"{node.name}_shape"], [out], name=f"{node.name}_reshape"),
    ]


def table_block(hidden: int, block_size: int) -> int | None:
    """``block_size``, halved until it divides ``hidden`` (GatherBlockQuantized needs whole blocks
    along the hidden axis, of 16 or more); None when none does. SmolLM2's 576 takes 64, not 128:
    leaving the table float instead would keep a float32 lm_head (113 MB there)."""
    block = block_size
    while hidden % block and block > 16:
        block //= 2
    return None if hidden % block else block


def quantize_tables(graph: Any, bits: int, block_size: int, accuracy_level: int) -> dict[str, int]:
    """Embedding tables -> GatherBlockQuantized; a tied lm_head -> MatMulNBits on the same bytes."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in graph.initializer}
    ties = {t.table: t for t in tied.find(graph)}
    vocab = _vocab(graph)
    gathered = {
        name: gathers for name, gathers in tied.tables(graph).items() if name in ties or inits[name].dims[0] == vocab
    }
    replace: dict[str, list] = {}
    dropped: set[str] = set()
    for table, gathers in gathered.items():
        array = external.array(inits[table])
        rows, hidden = array.shape
        block = table_block(hidden, block_size)
        if block is None:
            continue  # GatherBlockQuantized needs whole blocks along the hidden axis
        packed = pack(array.T, bits, block)
        data, scales = f"{table}_Q{bits}", f"{table}_scales"
        graph.initializer.extend(
            [
                numpy_helper.from_array(packed.data, data),
                numpy_helper.from_array(packed.scales, scales),
            ]
        )
        for gather in gathers:
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.array([2], dtype=np.int64), f"{gather}_axes"),
                    numpy_helper.from_array(np.array([0, 0, hidden], dtype=np.int64), f"{gather}_shape"),
                ]
            )
            replace[gather] = [data, scales, block]
        dropped.add(table)
        tie = ties.get(table)
        for matmul in tie.matmuls if tie else ():
            replace[matmul] = [data, scales, block, rows, hidden]
        if tie:  # the Transpose feeding the lm_head, whoever named it (torch's exporter may)
            replace.update({n.name: [] for n in graph.node if tie.transposed in n.output})
    nodes = []
    for node in graph.node:
        how = replace.get(node.name)
        if how is None:
            nodes.append(node)
        elif node.op_type == "Gather":
            nodes.extend(_gather(node, how[0], how[1], bits, how[2], int(inits[node.input[0]].dims[1])))
        elif node.op_type == "MatMul":
            kwargs: dict[str, Any] = {"K": how[4], "N": how[3], "bits": bits, "block_size": how[2]}
            if accuracy_level:
                kwargs["accuracy_level"] = accuracy_level
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [node.input[0], how[0], how[1]],
                    list(node.output),
                    name=f"{node.name}_Q{bits}",
                    domain="com.microsoft",
                    **kwargs,
                )
            )
    del graph.node[:]
    graph.node.extend(nodes)
    for name in dropped:
        graph.initializer.remove(inits[name])
    return {"tables": len(dropped), "tied": sum(1 for t in dropped if t in ties)}


def _vocab(graph: Any) -> int | None:
    """The logits' vocabulary size, when the graph states it."""
    for output in graph.output:
        if output.name == "logits":
            dims = output.type.tensor_type.shape.dim
            if dims and dims[-1].HasField("dim_value"):
                return int(dims[-1].dim_value)
    return None


# The GPTQ codes of the last fp32 model quantized, for the build's next attempt: mixed-precision
# plans and the sensitivity ranking quantize the same weights again with other nodes at 8 bits.
_CODES: dict[tuple[Any, ...], nbits.Codes] = {}


# The experts' codes likewise (graph/moe.py), per MoE node.
_EXPERT_CODES: dict[tuple[Any, ...], dict[str, Any]] = {}


def gptq_codes(
    settings: WeightOnly,
    src: Path,
    model: Any,
    calibration: Feeds | None,
    bits: int,
    calibration_digest: str | None,
) -> nbits.Codes:
    """GPTQ codes of ``model`` (loaded from ``src``), computed once per file, texts and bits."""
    if calibration is None:
        raise StageError("GPTQ needs calibration texts")
    stat = src.stat()
    key = (str(src.resolve()), stat.st_mtime_ns, stat.st_size, calibration_digest, settings.block_size, bits)
    if key not in _CODES:
        _CODES.clear()
        _CODES[key] = nbits.gptq_codes(model, calibration, bits, settings.block_size)
    return _CODES[key]


def quantize(
    settings: WeightOnly,
    src: Path,
    dst: Path,
    bits: int = 4,
    calibration: Feeds | None = None,
    calibration_digest: str | None = None,
) -> dict[str, Any]:
    """Write ``dst``: ``src`` with its weights blockwise-quantized to ``bits`` (the profile's
    ``int8_nodes`` to 8); return counts. GPTQ runs ``calibration``'s feeds through ``src``.
    ``src``'s external data (a model over 2 GB) is mapped, not loaded."""
    model = external.load(src)
    gemms = gemm_to_matmul(model.graph)
    record: dict[str, Any] = {"gemm_rewritten": gemms}
    if settings.algorithm == "gptq":
        codes = gptq_codes(settings, src, model, calibration, bits, calibration_digest)
    if moe.nodes(model.graph):  # routed experts -> QMoE, GPTQ on each expert's own routed rows
        feeds = calibration() if calibration is not None and settings.algorithm == "gptq" else None
        stat = src.stat()
        key = (str(src.resolve()), stat.st_mtime_ns, stat.st_size, calibration_digest, settings.block_size, bits)
        if key not in _EXPERT_CODES:  # the build's next attempt (another 8-bit plan) reuses them
            _EXPERT_CODES.clear()
            _EXPERT_CODES[key] = {}
        record["experts"] = moe.quantize(
            model, bits, settings.block_size, settings.accuracy_level, feeds, nbits.DAMP, _EXPERT_CODES[key]
        )
    if settings.algorithm == "gptq":
        high = set(settings.int8_nodes)
        plan = {n.name: 8 if n.name in high else bits for n in nbits.weight_matmuls(model.graph)}
        counts = nbits.quantize(model.graph, plan, settings.block_size, settings.accuracy_level, codes)
        return _finish(settings, model, dst, {**record, "matmuls": counts})
    return _finish(settings, _onnxruntime_rtn(settings, model, bits), dst, record)


def _onnxruntime_rtn(settings: WeightOnly, model: Any, bits: int) -> Any:
    """Round-to-nearest with onnxruntime's MatMulNBitsQuantizer (symmetric or with zero points)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    # The quantizer logs a line per node at INFO through a handler of its own.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    external.inline(model)  # the quantizer reads raw_data
    config = DefaultWeightOnlyQuantConfig(
        block_size=settings.block_size,
        is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level or None,
        bits=bits,
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        block_size=settings.block_size,
        is_symmetric=settings.symmetric,
        accuracy_level=settings.accuracy_level or None,
        algo_config=config,
    )
    quantizer.process()
    return quantizer.model.model


def _finish(settings: WeightOnly, model: Any, dst: Path, counts: dict[str, Any]) -> dict[str, Any]:
    """The embedding table (and a tied lm_head) quantized, the opset declared, ``dst`` written."""
    import onnx

    tables = {"tables": 0, "tied": 0}
    if settings.embedding_bits:
        block = settings.embedding_block_size or settings.block_size
        tables = quantize_tables(model.graph, settings.embedding_bits, block, settings.accuracy_level)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    external.save(model, dst)
    return {**counts, "embedding": tables}
