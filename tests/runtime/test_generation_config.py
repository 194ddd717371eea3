"""runtime_config: what a decoder bundle's runtime.json says, read from the model at build time."""

import json
import shutil

import onnx
import pytest
from onnx import TensorProto, helper

from edgepipe.errors import ModelError
from edgepipe.tasks.decoder_runtime import chat_template, eos_token_ids, kv_shape, runtime_config
from tests.decoders import KINDS


@pytest.mark.parametrize("kind", KINDS)
def test_kv_shape_and_limits_follow_the_model(decoder_bundle, kind):
    bundle = decoder_bundle(kind)
    config = json.loads((bundle.model_dir / "config.json").read_text())
    runtime = runtime_config(bundle.model_dir, bundle.root / "model" / "model.onnx", 2, 1, ["CPUExecutionProvider"])
    layers = config.get("num_hidden_layers") or config["n_layer"]
    heads = config.get("num_attention_heads") or config["n_head"]
    kv_heads = config.get("num_key_value_heads", heads)
    hidden = config.get("hidden_size") or config["n_embd"]
    assert (runtime.num_layers, runtime.num_kv_heads, runtime.head_dim) == (
        layers,
        kv_heads,
        hidden // heads,
    )
    assert runtime.max_length == 256 and runtime.eos_token_ids == (config["eos_token_id"],)
    assert (runtime.intra_op_threads, runtime.inter_op_threads) == (2, 1)
    assert (runtime.chat_template is not None) == (kind == "qwen2")


def test_eos_ids_from_both_configs_int_or_list(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 2]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert eos_token_ids(tmp_path) == (7, 2)
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": [3, 4]}))
    assert eos_token_ids(tmp_path) == (3, 4)
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": None}))
    assert eos_token_ids(tmp_path) == ()


def decoder_stub(path, dims, layers=2):
    """A graph with past_key_values inputs shaped ``dims`` (ints or symbolic names)."""
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])]
    outputs = []
    nodes = []
    for i in range(layers):
        for part in ("key", "value"):
            name = f"past_key_values.{i}.{part}"
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", TensorProto.FLOAT, dims))
            nodes.append(helper.make_node("Identity", [name], [f"present.{i}.{part}"]))
    onnx.save(helper.make_model(helper.make_graph(nodes, "stub", inputs, outputs)), path)
    return path


def test_symbolic_kv_dims_come_from_config_json(tmp_path):
    model = decoder_stub(tmp_path / "m.onnx", ["b", "heads", "past", "dim"], layers=3)
    config = {"num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512}
    assert kv_shape(model, config) == (3, 2, 64)
    assert kv_shape(model, {**config, "head_dim": 128}) == (3, 2, 128)
    assert kv_shape(decoder_stub(tmp_path / "s.onnx", ["b", 4, "past", 16]), {}) == (2, 4, 16)


def test_a_model_without_kv_cache_or_context_length_is_refused(tmp_path, decoder_bundle):
    no_past = helper.make_graph(
        [helper.make_node("Identity", ["input_ids"], ["logits"])],
        "encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"])],
        [helper.make_tensor_value_info("logits", TensorProto.INT64, ["b", "s"])],
    )
    onnx.save(helper.make_model(no_past), tmp_path / "encoder.onnx")
    with pytest.raises(ModelError, match="export it with task text-generation-with-past"):
        kv_shape(tmp_path / "encoder.onnx", {})
    bundle = decoder_bundle("llama")
    model_dir = tmp_path / "llama"
    shutil.copytree(bundle.model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    del config["max_position_embeddings"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="cannot tell the model's context length"):
        runtime_config(model_dir, bundle.root / "model" / "model.onnx", 1, 1, ["CPUExecutionProvider"])


def test_the_template_is_read_as_transformers_loads_it(decoder_bundle):
    from tests.decoders import CHATML

    bundle = decoder_bundle("qwen2")
    source, special = chat_template(bundle.model_dir)
    assert source == CHATML and special["eos_token"] == "<|im_end|>"
    assert chat_template(decoder_bundle("llama").model_dir) is None


def test_context_of_models_whose_config_states_none(tmp_path):
    """Falcon-7B's config.json leaves it to FalconConfig's default; BLOOM (ALiBi) has none: its
    tokenizer's model_max_length, else the length it was trained at."""
    from edgepipe.tasks.decoder_runtime import max_length

    assert max_length({"model_type": "falcon", "multi_query": True}, tmp_path) == 2048
    assert max_length({"model_type": "bloom", "n_head": 16}, tmp_path) == 2048
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 300}')
    assert max_length({"model_type": "bloom"}, tmp_path) == 300
    (tmp_path / "tokenizer_config.json").write_text('{"model_max_length": 1e30}')
    assert max_length({"model_type": "bloom"}, tmp_path) == 2048
    with pytest.raises(ModelError, match="cannot tell the model's context length"):
        max_length({"model_type": "gpt_neox"}, tmp_path)
