"""Export and quantize on the tiny model: structure of the graphs and numeric agreement."""

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from edgepipe import catalog
from edgepipe.graph.smooth import smooth
from edgepipe.runtime.integrity import sha256_file
from edgepipe.stages import export, quantize
from edgepipe.tasks.texts import builtin_calibration_texts


@pytest.fixture(scope="module")
def exported(tiny_bert_master, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    record = export.run(export.ExportConfig(task="feature-extraction"), tiny_bert_master, out)
    return out, record


def test_export_writes_model_and_tokenizer(exported):
    out, record = exported
    assert set(record["outputs"]) == {
        "model.onnx",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
    }
    assert record["outputs"]["model.onnx"] == sha256_file(out / "model.onnx")
    assert record["max_length"] == 64  # the tokenizer's model_max_length, below 512 positions


def test_export_matches_pytorch(exported, tiny_bert_master):
    import onnxruntime as ort

    out, _ = exported
    tok = AutoTokenizer.from_pretrained(tiny_bert_master)
    enc = tok("turn on the kitchen lights", return_tensors="np")
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}
    (onnx_out,) = session.run(["last_hidden_state"], feeds)
    with torch.inference_mode():
        ref = AutoModel.from_pretrained(tiny_bert_master)(**tok("turn on the kitchen lights", return_tensors="pt"))
    np.testing.assert_allclose(onnx_out, ref.last_hidden_state.numpy(), atol=1e-4)


def calibration(out):
    return quantize.CalibrationData(builtin_calibration_texts("embedding"), out / "tokenizer" / "tokenizer.json", 64)


def test_dynamic_int8_quantizes_every_matmul_weight(exported, tmp_path):
    out, _ = exported
    fp32_counts = quantize.op_counts(out / "model.onnx")
    profile = catalog.profiles().load("x86-avx2-int8")
    config = quantize.QuantizeConfig.from_profile(profile, calibration_digest="x", task_kind="embedding")
    record = quantize.run(config, out / "model.onnx", tmp_path, calibration(out))
    counts = record["op_counts"]
    # Each MatMul with a constant weight becomes an integer MatMul; 2 layers x 6 weight MatMuls.
    assert counts.get("MatMulInteger", 0) + counts.get("DynamicQuantizeMatMul", 0) == 12
    assert counts.get("MatMul", 0) == fp32_counts["MatMul"] - 12
    # One rescale per distinct MatMul input: QKV share one, then attention-out, FFN-in, FFN-out.
    smoothing = [n for n in onnx.load(str(tmp_path / "model.onnx")).graph.node if n.name.endswith("_smooth")]
    assert len(smoothing) == 2 * 4
    assert record["size_bytes"] < (out / "model.onnx").stat().st_size


def test_smoothing_is_exact_in_fp32(exported, tmp_path):
    import onnxruntime as ort

    out, _ = exported
    smooth(
        out / "model.onnx",
        tmp_path / "s.onnx",
        0.65,
        builtin_calibration_texts("embedding"),
        out / "tokenizer" / "tokenizer.json",
        64,
    )
    ids = np.array([[2, 40, 41, 42, 43, 3]], dtype=np.int64)
    feeds = {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }
    before = ort.InferenceSession(str(out / "model.onnx")).run(None, feeds)[0]
    after = ort.InferenceSession(str(tmp_path / "s.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def test_smoothing_leaves_a_shared_weight_alone(exported, tmp_path):
    """A weight that another node reads too (DeBERTa's query projection, which also projects the
    relative position embeddings through a Transpose) is not rescaled for one MatMul's input."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = rng.normal(size=(400, 8)).astype(np.float32)
    table[:, 3] *= 30  # an outlier channel, which smoothing would move into W
    weight = rng.normal(size=(8, 8)).astype(np.float32)
    positions = rng.normal(size=(4, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["x"], name="embed"),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"),
            helper.make_node("Transpose", ["w"], ["wt"], name="wt", perm=[1, 0]),
            helper.make_node("MatMul", ["positions", "wt"], ["p"], name="pos_proj"),
            helper.make_node("MatMul", ["y", "w2"], ["z"], name="out"),
        ],
        "shared",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "s"])],
        [
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, "s", 8]),
            helper.make_tensor_value_info("p", TensorProto.FLOAT, [4, 8]),
        ],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(weight, "w"),
            numpy_helper.from_array(positions, "positions"),
            numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    out, _ = exported
    tokenizer = out / "tokenizer" / "tokenizer.json"
    smooth(tmp_path / "m.onnx", tmp_path / "s.onnx", 0.65, ["turn on the lights"], tokenizer, 64)
    feeds = {"input_ids": np.array([[2, 40, 41, 3]], dtype=np.int64)}
    before = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, feeds)
    after = ort.InferenceSession(str(tmp_path / "s.onnx")).run(None, feeds)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    rescaled = [n.name for n in onnx.load(str(tmp_path / "s.onnx")).graph.node if n.op_type == "Mul"]
    assert rescaled == ["y_smooth"]  # the MatMul whose weight is its own still is


def test_excluded_nodes_stay_float(exported, tmp_path):
    out, _ = exported
    graph = onnx.load(str(out / "model.onnx")).graph
    weights = {i.name for i in graph.initializer}
    weight_matmuls = [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    config = quantize.QuantizeConfig(
        method="dynamic-int8",
        quantization={"op_types": ["MatMul"], "nodes_to_exclude": weight_matmuls[:2]},
        task_kind="embedding",
    )
    counts = quantize.run(config, out / "model.onnx", tmp_path)["op_counts"]
    assert counts.get("MatMulInteger", 0) + counts.get("DynamicQuantizeMatMul", 0) == 10


def test_fp16_keeps_fp32_inputs_and_outputs(exported, tmp_path):
    out, _ = exported
    profile = catalog.profiles().load("jetson-fp16")
    quantize.run(
        quantize.QuantizeConfig.from_profile(profile, task_kind="embedding"),
        out / "model.onnx",
        tmp_path,
    )
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dtypes = {i.data_type for i in model.graph.initializer if len(i.dims) == 2}
    assert onnx.TensorProto.FLOAT16 in dtypes


def test_fp32_is_a_byte_copy(exported, tmp_path):
    out, _ = exported
    record = quantize.run(quantize.QuantizeConfig(method="fp32", task_kind="embedding"), out / "model.onnx", tmp_path)
    assert record["outputs"]["model.onnx"] == sha256_file(out / "model.onnx")
