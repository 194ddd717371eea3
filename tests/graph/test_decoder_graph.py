"""The GroupQueryAttention rewrite keeps the model's I/O and its numbers (tiny Llama and Qwen2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgepipe.graph import decoder_graph
from tests.decoders import export_decoder, make_tiny_decoder


def run_steps(path: Path, ids: list[int], split: int, steps: int = 8) -> tuple[np.ndarray, list[int]]:
    """Logits of a prefill of ids[:split] then one pass over the rest with the cache (one pass
    when ``split`` is len(ids)), and the greedy continuation of ``steps`` tokens, one at a time."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    shape = inputs["past_key_values.0.key"].shape
    names = [o.name for o in session.get_outputs()]
    empty = np.zeros((1, shape[1], 0, shape[3]), np.float32)
    feeds: dict[str, np.ndarray] = {n: empty for n in inputs if n.startswith("past_key_values.")}

    def forward(chunk: list[int], start: int) -> np.ndarray:
        end = start + len(chunk)
        feeds.update(input_ids=np.asarray([chunk], np.int64), attention_mask=np.ones((1, end), np.int64))
        if "position_ids" in inputs:  # Gemma's export has none
            feeds["position_ids"] = np.arange(start, end, dtype=np.int64)[None]
        logits, *presents = session.run(names, feeds)
        for name, value in zip(names[1:], presents, strict=True):
            feeds[name.replace("present.", "past_key_values.")] = value
        return np.asarray(logits[0])

    chunks = [(chunk, start) for chunk, start in ((ids[:split], 0), (ids[split:], split)) if chunk]
    logits = np.concatenate([forward(chunk, start) for chunk, start in chunks])
    tokens, position = [int(logits[-1].argmax())], len(ids)
    while len(tokens) < steps:
        tokens.append(int(forward(tokens[-1:], position)[-1].argmax()))
        position += 1
    return logits, tokens


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_rewrite_matches_the_export(kind: str, tmp_path: Path) -> None:
    model_dir = make_tiny_decoder(kind, tmp_path / "hf")  # head_dim 16
    original = export_decoder(model_dir, tmp_path / "onnx")
    rewritten = tmp_path / "gqa.onnx"
    info = decoder_graph.optimize(original, rewritten)

    assert info["skipped"] is None
    assert info["attention_layers_fused"] == 2
    assert info["op_counts"]["GroupQueryAttention"] == 2
    assert info["nodes_after"] < info["nodes_before"] / 3
    # Llama packs q/k/v and gate/up (3 MatMuls fewer per layer); Qwen2's biased q/k/v stay.
    assert info["matmuls_packed"] == (6 if kind == "llama" else 2)
    before, after = onnx.load(str(original)).graph, onnx.load(str(rewritten)).graph
    # One input more, with a default: logits_to_keep (0, every position).
    assert [i.name for i in after.input] == [i.name for i in before.input] + ["logits_to_keep"]
    assert info["logits_to_keep"] is True
    assert [o.name for o in after.output] == [o.name for o in before.output]
    # The runtime keeps this model's KV cache in one buffer per layer, written in place.
    meta = {p.key: p.value for p in onnx.load(str(rewritten)).metadata_props}
    assert meta["edgepipe.kv_cache"] == "shared-buffer" and meta["edgepipe.attention_heads"] == "4"

    ids = list(range(3, 23))
    expected, expected_tokens = run_steps(original, ids, split=15)
    actual, tokens = run_steps(rewritten, ids, split=15)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert tokens == expected_tokens
    session = ort.InferenceSession(str(rewritten), providers=["CPUExecutionProvider"])
    assert "logits_to_keep" not in {i.name for i in session.get_inputs()}  # it has a default
    shape = next(i.shape for i in session.get_inputs() if i.name.startswith("past_key_values."))
    empty = np.zeros((1, shape[1], 0, shape[3]), np.float32)
    feeds = {i.name: empty for i in session.get_inputs() if i.name.startswith("past_key_values.")}
    feeds.update(
        input_ids=np.asarray([ids[:15]], np.int64),
        attention_mask=np.ones((1, 15), np.int64),
        position_ids=np.arange(15, dtype=np.int64)[None],
    )
    last = session.run(["logits"], {**feeds, "logits_to_keep": np.array([1], np.int64)})[0]
    assert last.shape[1] == 1
    np.testing.assert_allclose(last[0], expected[14:15], atol=1e-4, rtol=1e-4)


def test_unsupported_models_are_left_alone(tmp_path: Path) -> None:
    model_dir = make_tiny_decoder("llama", tmp_path / "hf", hidden=32)  # head_dim 8
    original = export_decoder(model_dir, tmp_path / "onnx")
    info = decoder_graph.optimize(original, tmp_path / "same.onnx")
    assert info["attention_layers_fused"] == 0
    assert "head_dim 8" in info["skipped"]
    config = {
        "model_type": "llama",
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "hidden_size": 32,
        "max_position_embeddings": 256,
        "rope_scaling": {"rope_type": "mrope", "factor": 8.0},
    }
    info = decoder_graph.optimize(original, tmp_path / "same.onnx", config=config)
    assert "rope_scaling" in info["skipped"]
    assert "GroupQueryAttention" not in info["op_counts"]
    assert info["nodes_after"] == info["nodes_before"]
    assert not any(p.key.startswith("edgepipe.") for p in onnx.load(str(tmp_path / "same.onnx")).metadata_props)
    gpt2 = {**config, "model_type": "gpt2"}
    info = decoder_graph.optimize(original, tmp_path / "same.onnx", config=gpt2)
    assert "model_type 'gpt2'" in info["skipped"] and info["attention_layers_fused"] == 0
