"""Routed experts: a MoE node (as the export writes it) -> QMoE int4, checked against numpy."""

from __future__ import annotations

import numpy as np
import pytest

from edgepipe.graph import gptq, moe

E, H, INTER, K = 4, 64, 32, 2


def _model(rng: np.random.Generator, attrs: dict, biases: bool) -> tuple[object, dict[str, np.ndarray]]:
    """x -> router MatMul -> MoE, with random experts (gpt-oss style biases when asked)."""
    from onnx import TensorProto, helper, numpy_helper

    weights = {
        "router": rng.standard_normal((H, E)).astype(np.float32),
        "fc1": (rng.standard_normal((E, 2 * INTER, H)) * 0.2).astype(np.float32),
        "b1": (rng.standard_normal((E, 2 * INTER)) * 0.1 if biases else np.zeros((E, 2 * INTER))).astype(np.float32),
        "fc2": (rng.standard_normal((E, H, INTER)) * 0.2).astype(np.float32),
        "b2": (rng.standard_normal((E, H)) * 0.1 if biases else np.zeros((E, H))).astype(np.float32),
    }
    nodes = [
        helper.make_node("Identity", ["x"], ["h"], name="in"),
        helper.make_node("MatMul", ["h", "router"], ["logits"], name="router"),
        helper.make_node("MoE", ["h", "logits", "fc1", "b1", "fc2", "b2"], ["y"], name="moe", domain="com.microsoft",
                         k=K, activation_type="swiglu", swiglu_fusion=1, **attrs),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets), weights


def _reference(x: np.ndarray, w: dict[str, np.ndarray], fc1: np.ndarray, fc2: np.ndarray, attrs: dict) -> np.ndarray:
    """The MoE node's maths: softmax, top-k (renormalised when asked), SwiGLU experts."""
    logits = x @ w["router"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    out = np.zeros_like(x)
    for t in range(len(x)):
        top = np.argsort(-probs[t])[:K]
        share = probs[t, top] / (probs[t, top].sum() if attrs.get("normalize_routing_weights") else 1.0)
        for e, s in zip(top, share, strict=True):
            act = moe.swiglu((x[t] @ fc1[e].T + w["b1"][e])[None], attrs)[0]
            out[t] += s * (fc2[e] @ act + w["b2"][e])
    return out


def _run(model: object, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


MIXTRAL = {"normalize_routing_weights": 1, "activation_alpha": 1.0, "activation_beta": 0.0}
GPT_OSS = {"normalize_routing_weights": 1, "activation_alpha": 1.702, "activation_beta": 1.0, "swiglu_limit": 7.0}
QWEN2_MOE = {"normalize_routing_weights": 0, "activation_alpha": 1.0, "activation_beta": 0.0}


@pytest.mark.parametrize(
    ("attrs", "biases"), [(MIXTRAL, False), (GPT_OSS, True), (QWEN2_MOE, False)], ids=["mixtral", "gpt-oss", "qwen2"]
)
def test_moe_node_is_the_routed_maths(attrs, biases):
    """onnxruntime's CPU MoE kernel computes exactly the routing and activation the export means."""
    rng = np.random.default_rng(0)
    model, w = _model(rng, attrs, biases)
    x = rng.standard_normal((9, H)).astype(np.float32)
    np.testing.assert_allclose(_run(model, x), _reference(x, w, w["fc1"], w["fc2"], attrs), atol=2e-5)


def _dequantized(weight: np.ndarray, rows: np.ndarray | None, block: int) -> np.ndarray:
    codes = moe._expert_codes(weight, rows, 4, block, 0.1)
    return codes.dequantize(weight.shape[1]).T


@pytest.mark.parametrize(("attrs", "biases"), [(MIXTRAL, False), (GPT_OSS, True)], ids=["mixtral", "gpt-oss"])
def test_qmoe_runs_the_int4_codes_and_calibration_reaches_every_expert(attrs, biases):
    rng = np.random.default_rng(1)
    model, w = _model(rng, attrs, biases)
    calib = [{"x": rng.standard_normal((80, H)).astype(np.float32)} for _ in range(3)]
    x = rng.standard_normal((9, H)).astype(np.float32)
    fp32 = _run(model, x)
    counts = moe.quantize(model, 4, 32, 0, calib)
    assert counts == {"moe_nodes": 1, "experts": E, "experts_calibrated": E, "block_size": 32}
    assert [n.op_type for n in model.graph.node] == ["Identity", "MatMul", "QMoE"]
    got = _run(model, x)
    # The same codes, dequantized in numpy from each expert's own routed rows: the kernel's result.
    rows = np.concatenate([c["x"] for c in calib])
    chosen = moe.routes(rows @ w["router"], K)
    fc1 = np.stack([_dequantized(w["fc1"][e], rows[(chosen == e).any(1)], 32) for e in range(E)])
    acts = [
        moe.swiglu(rows[(chosen == e).any(1)] @ w["fc1"][e].T + w["b1"][e], attrs) for e in range(E)
    ]  # fc2 is calibrated on the fp32 fc1's activations
    fc2 = np.stack([_dequantized(w["fc2"][e], acts[e], 32) for e in range(E)])
    np.testing.assert_allclose(got, _reference(x, w, fc1, fc2, attrs), atol=5e-5)
    assert 0 < np.abs(got - fp32).max() < 0.2 * np.abs(fp32).max()


def test_uncalibrated_experts_round_to_nearest_and_blocks_fit():
    rng = np.random.default_rng(2)
    model, w = _model(rng, MIXTRAL, False)
    counts = moe.quantize(model, 4, 128, 4)  # no texts; 128 does not divide 32: 32 is taken
    assert counts["experts_calibrated"] == 0 and counts["block_size"] == 32
    node = model.graph.node[-1]
    assert moe.attributes(node)["accuracy_level"] == 4 and moe.attributes(node)["expert_weight_bits"] == 4
    assert node.input[4] == "" and node.input[7] == ""  # zero biases dropped
    x = rng.standard_normal((5, H)).astype(np.float32)
    fc1 = np.stack([gptq.rtn(w["fc1"][e].T, 4, 32).dequantize(H).T for e in range(E)])
    fc2 = np.stack([gptq.rtn(w["fc2"][e].T, 4, 32).dequantize(INTER).T for e in range(E)])
    # accuracy_level 4: int8 activations inside the kernel, so only close, not exact.
    np.testing.assert_allclose(_run(model, x), _reference(x, w, fc1, fc2, MIXTRAL), atol=0.1)


def test_active_parameters_count_k_of_each_nodes_experts():
    model, _ = _model(np.random.default_rng(3), MIXTRAL, False)
    found = moe.parameters(model)
    experts = E * (2 * INTER * H + 2 * INTER + H * INTER + H)
    assert found["parameters"] == H * E + experts
    assert found["active_parameters"] == H * E + experts * K // E
