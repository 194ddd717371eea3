"""graph/external.py: models over 2 GB as a model file and one data file, on tiny graphs (the size
threshold is lowered through its test hook)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgepipe.graph import external


def two_matmuls(seed: int = 0) -> onnx.ModelProto:
    """x [1, 64] -> MatMul(w1 [64, 128]) -> MatMul(w2 [128, 32]) -> y, plus a tiny bias."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((64, 128)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((128, 32)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.ones(32, np.float32), "b"),  # under 1 KB: stays inline
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: Path | onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    if isinstance(model, Path):
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    else:
        session = external.session(model, ort.SessionOptions(), ["CPUExecutionProvider"])
    return session.run(["y"], {"x": x})[0]


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)


def test_over_the_threshold_tensors_go_to_one_aligned_data_file(tmp_path, monkeypatch, x):
    monkeypatch.setenv(external.THRESHOLD_ENV, "10000")  # the model's tensors: ~49 KB
    path, whole = tmp_path / "model.onnx", tmp_path / "whole.onnx"
    onnx.save(two_matmuls(), str(whole))
    expected = run(whole, x)
    external.save(two_matmuls(), path)
    data = external.data_file(path)
    assert data.name == "model.onnx.data" and data.is_file()
    assert path.stat().st_size < 2000  # offsets, not weights
    assert external.files(path) == [path, data]
    assert external.size(path) == path.stat().st_size + data.stat().st_size
    light = onnx.load(str(path), load_external_data=False)
    where = {t.name: {e.key: e.value for e in t.external_data} for t in light.graph.initializer}
    assert where["b"] == {}  # small tensors stay in the model file
    assert {where[w]["location"] for w in ("w1", "w2")} == {"model.onnx.data"}
    assert all(int(where[w]["offset"]) % external.ALIGN == 0 for w in ("w1", "w2"))
    # onnx and onnxruntime read it as the same model.
    full = onnx.load(str(path))
    for tensor, original in zip(full.graph.initializer, two_matmuls().graph.initializer, strict=True):
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), numpy_helper.to_array(original))
    np.testing.assert_array_equal(run(path, x), expected)


def test_loaded_model_maps_its_weights_and_saves_in_place(tmp_path, monkeypatch, x):
    monkeypatch.setenv(external.THRESHOLD_ENV, "10000")
    path = tmp_path / "model.onnx"
    external.save(two_matmuls(), path)
    expected, data_size = run(path, x), external.data_file(path).stat().st_size
    model = external.load(path)
    assert external.has_external(model)
    w1 = next(t for t in model.graph.initializer if t.name == "w1")
    original = numpy_helper.to_array(two_matmuls().graph.initializer[0])
    mapped = external.array(w1)
    np.testing.assert_array_equal(mapped, original)
    assert not mapped.flags.writeable  # a view of the file, not a copy
    np.testing.assert_array_equal(run(model, x), expected)  # a session of the loaded model
    # Rewritten in place (as the export stage's rewrites do): not appended to the old data.
    model.graph.node[2].op_type = "Sub"
    external.save(model, path)
    assert external.data_file(path).stat().st_size == data_size
    np.testing.assert_allclose(run(path, x), expected - 2.0, rtol=1e-6)
    np.testing.assert_array_equal(external.array(w1), original)  # still readable afterwards
    assert not list(tmp_path.glob(".*tmp"))


def test_under_the_threshold_saved_whole_and_stale_data_removed(tmp_path, monkeypatch, x):
    monkeypatch.setenv(external.THRESHOLD_ENV, "10000")
    path = tmp_path / "model.onnx"
    external.save(two_matmuls(), path)
    model = external.load(path)
    expected = run(model, x)
    monkeypatch.delenv(external.THRESHOLD_ENV)  # the default: 2 GB less headroom
    external.save(model, path)
    assert not external.data_file(path).exists()
    assert not external.has_external(onnx.load(str(path), load_external_data=False))
    np.testing.assert_array_equal(run(path, x), expected)


def test_digest_covers_the_data_file():
    outputs = {"model.onnx": "a" * 64, "tokenizer/tokenizer.json": "b" * 64}
    assert external.digest(outputs, "model.onnx") == "a" * 64  # no data file: the file's sha256
    with_data = {**outputs, "model.onnx.data": "c" * 64}
    other_data = {**outputs, "model.onnx.data": "d" * 64}
    assert external.digest(with_data, "model.onnx") != external.digest(other_data, "model.onnx")
    assert external.digest(with_data, "model.onnx") == hashlib.sha256(f"{'a' * 64}\n{'c' * 64}\n".encode()).hexdigest()


def test_keep_external_writes_data_under_the_threshold(tmp_path, x):
    """An export that optimum wrote with external data stays so after its rewrites shrank it."""
    path = tmp_path / "model.onnx"
    external.save(two_matmuls(), path, keep_external=True)  # the default threshold: 2 GB
    assert external.data_file(path).is_file()
    assert external.has_external(onnx.load(str(path), load_external_data=False))
    onnx.save(two_matmuls(), str(tmp_path / "whole.onnx"))
    np.testing.assert_array_equal(run(path, x), run(tmp_path / "whole.onnx", x))


def test_export_skips_optimums_post_processing_over_2_gb(tmp_path):
    """A bfloat16 checkpoint counts twice its size: its export is float32."""
    from edgepipe.stages.export import fp32_bytes

    (tmp_path / "config.json").write_text('{"dtype": "bfloat16"}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1000)
    assert fp32_bytes(tmp_path) == 2000
    (tmp_path / "config.json").write_text('{"torch_dtype": "float32"}')
    assert fp32_bytes(tmp_path) == 1000
