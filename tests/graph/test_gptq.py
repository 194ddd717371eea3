"""GPTQ and round-to-nearest codes in MatMulNBits' layout: exact packing, and GPTQ's smaller error."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.graph import gptq, nbits


def _matmul_nbits(q: gptq.Quantized, k: int, n: int) -> ort.InferenceSession:
    data, scales, zeros = q.packed()
    node = helper.make_node(
        "MatMulNBits",
        ["x", "B", "s", "z"],
        ["y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=q.bits,
        block_size=q.block,
    )
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
        [numpy_helper.from_array(a, name) for a, name in ((data, "B"), (scales, "s"), (zeros, "z"))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _correlated(rng: np.random.Generator, k: int, rows: int = 400) -> np.ndarray:
    """Activations with uneven, correlated channels, as a transformer's are."""
    mix = rng.normal(size=(k, k)) * np.exp(rng.normal(size=k))[None, :]
    return rng.normal(size=(rows, k)) @ mix / np.sqrt(k)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize(("k", "n"), [(96, 40), (64, 33), (80, 24)])  # 80: a partial last block
def test_packed_codes_are_what_matmulnbits_computes(bits: int, k: int, n: int) -> None:
    rng = np.random.default_rng(k * n + bits)
    weight = rng.normal(size=(k, n)).astype(np.float32)
    x = rng.normal(size=(3, k)).astype(np.float32)
    hessian = (lambda a: a.T @ a)(_correlated(rng, k))
    for q in (gptq.rtn(weight, bits, 32), gptq.gptq(weight, hessian, bits, 32)):
        (y,) = _matmul_nbits(q, k, n).run(None, {"x": x})
        np.testing.assert_allclose(y, x @ q.dequantize(k), rtol=1e-5, atol=1e-5)
        assert q.codes.max() < 2**bits


def test_gptq_cuts_the_output_error_of_round_to_nearest() -> None:
    rng = np.random.default_rng(0)
    k, n = 256, 64
    weight = rng.normal(size=(k, n)).astype(np.float32)
    x = _correlated(rng, k)
    hessian = x.T @ x

    def output_error(q: gptq.Quantized) -> float:
        return float(np.linalg.norm(x @ (q.dequantize(k) - weight)) / np.linalg.norm(x @ weight))

    plain = output_error(gptq.rtn(weight, 4, 32, clips=(1.0,)))
    weighted = output_error(gptq.rtn(weight, 4, 32, np.diag(hessian)))
    solved = output_error(gptq.gptq(weight, hessian, 4, 32))
    ordered = output_error(gptq.gptq(weight, hessian, 4, 32, act_order=True))
    assert weighted < plain
    assert solved < 0.6 * plain  # measured 0.55x
    assert ordered < 0.6 * plain


def _two_layer_model(rng: np.random.Generator) -> onnx.ModelProto:
    w1 = rng.normal(size=(64, 96)).astype(np.float32)
    w2 = rng.normal(size=(96, 32)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"], name="second"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5, 32])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mixed_precision_plan_and_hessians_from_the_graph() -> None:
    rng = np.random.default_rng(1)
    model = _two_layer_model(rng)
    feeds = [{"x": rng.normal(size=(1, 5, 64)).astype(np.float32)} for _ in range(4)]
    stats = nbits.hessians(model, feeds)
    x = np.concatenate([f["x"].reshape(5, 64) for f in feeds]).astype(np.float64)
    gram = x.T @ x  # float32 per text: near-zero entries are good to float32's rounding of the largest
    np.testing.assert_allclose(stats["x"], gram, rtol=1e-5, atol=1e-6 * np.abs(gram).max())
    codes = nbits.gptq_codes(model, lambda: iter(feeds), 4, 32)
    assert set(codes) == {("w1", 4), ("w2", 4)}
    counts = nbits.quantize(model.graph, {"first": 8, "second": 4}, 32, 4, codes)
    assert counts == {"int4": 1, "int8": 1}
    ops = {n.name: (n.op_type, {a.name: a.i for a in n.attribute}) for n in model.graph.node}
    assert ops["first_Q8"][1]["bits"] == 8 and ops["second_Q4"][1]["bits"] == 4
    assert not {"w1", "w2"} & {t.name for t in model.graph.initializer}  # fp32 weights dropped
    # The 4-bit node reused the GPTQ codes it was given: its packed bytes are those codes'.
    packed = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(packed["w2_Q4"], codes[("w2", 4)].packed()[0])
