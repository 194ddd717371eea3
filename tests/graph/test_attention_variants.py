"""GroupQueryAttention for the q/k-norm and soft-capped families (graph/attention_variants.py).

Each tiny model's rewrite gives PyTorch's logits on a prompt longer than the sliding window (8), read
as a prefill, a second chunk over the cache, then single tokens, and each layer's node carries the
window, scale, soft-cap and RoPE table its config says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgepipe.catalog import families
from edgepipe.graph import attention_variants, decoder_graph
from tests.decoders import export_decoder
from tests.families.norms import TINY, WINDOW
from tests.graph.test_decoder_graph import run_steps

PROMPT = list(range(6, 26))  # 20 tokens: more than two windows


def torch_run(model_dir: Path, ids: list[int], steps: int) -> tuple[np.ndarray, list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    config = json.loads((model_dir / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir), attn_implementation=families.torch_attention(config)
    ).eval()
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].numpy()
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
        )
    return logits, out[0, len(ids) :].tolist()


def attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_rewrite_matches_pytorch(model_type: str, tmp_path: Path) -> None:
    model_dir = TINY[model_type](tmp_path / "hf")
    config = json.loads((model_dir / "config.json").read_text())
    original = export_decoder(model_dir, tmp_path / "onnx")
    rewritten = tmp_path / "gqa.onnx"
    info = decoder_graph.optimize(original, rewritten)
    assert info["skipped"] is None and info["attention_layers_fused"] == 2
    assert info["logits_to_keep"] is True  # after Gemma 2's final soft-cap too

    graph = onnx.load(str(rewritten)).graph
    producer = {out: n for n in graph.node for out in n.output}
    layers = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    scale = (config.get("query_pre_attn_scalar") or head_dim) ** -0.5
    for layer, node in enumerate(layers):
        attrs = attributes(node)
        assert attrs["scale"] == pytest.approx(scale)
        assert attrs.get("softcap", 0.0) == (config.get("attn_logit_softcapping") or 0.0)
        local = config.get("layer_types", ["full_attention"] * 2)[layer] == "sliding_attention"
        assert attrs.get("local_window_size", -1) == (WINDOW if local else -1)
        # q/k norms: the attention reads the norm's output, not the projection's.
        q_from = producer[node.input[0]].name
        assert ("norm" in q_from) == any("/self_attn/q_norm/" in n.name for n in graph.node)
    if model_type == "gemma3_text":  # local and global layers rotate with tables of their own
        assert layers[0].input[7] != layers[1].input[7]

    steps = 12
    want_logits, want_tokens = torch_run(model_dir, PROMPT, steps)
    got_logits, got_tokens = run_steps(rewritten, PROMPT, split=15, steps=steps)
    np.testing.assert_allclose(got_logits, want_logits, atol=2e-4, rtol=1e-4)
    assert got_tokens == want_tokens


def test_layer_kinds_of_real_configs_and_what_is_refused() -> None:
    """Configs as the hub ships them (no ``layer_types``): Gemma 2 slides on every other layer,
    Gemma 3 on five of six; what the rewrite cannot express is refused in one line."""
    gemma2 = {"model_type": "gemma2", "num_hidden_layers": 4, "sliding_window": 4096}
    assert attention_variants.layer_types(gemma2) == ["sliding_attention", "full_attention"] * 2
    gemma3 = {
        "model_type": "gemma3_text",
        "num_hidden_layers": 7,
        "sliding_window_pattern": 6,
        "sliding_window": 512,
        "rope_local_base_freq": 10000.0,
    }
    kinds = attention_variants.layer_types(gemma3)
    assert kinds.count("full_attention") == 1 and kinds[5] == "full_attention"
    assert attention_variants.unsupported(gemma3) is None
    assert attention_variants.unsupported({**gemma3, "rope_scaling": {"rope_type": "linear"}}) is None
    yarn = {**gemma3, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}
    assert "'yarn'" in str(attention_variants.unsupported(yarn))
    both_ways = {**gemma3, "use_bidirectional_attention": True}
    assert "bidirectional" in str(attention_variants.unsupported(both_ways))
    llama = {"model_type": "llama", "num_hidden_layers": 2}
    assert attention_variants.layer_types(llama) == ["full_attention"] * 2
    assert attention_variants.unsupported(llama) is None
