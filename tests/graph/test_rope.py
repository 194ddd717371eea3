"""RoPE scaling and sliding windows on the fused path: the same numbers as transformers.

One tiny Llama is exported once; each case rewrites that export with another config (the rewrite
replaces the whole attention, RoPE included) and compares it with transformers running the same
weights under that config: the prompt's logits in one pass, then 8 greedy tokens with the cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgepipe.graph import attention_layers, decoder_graph, rope
from tests.decoders import export_decoder, make_tiny_decoder
from tests.graph.test_decoder_graph import run_steps

SHORT = [1.0, 1.1, 1.3, 1.7, 2.2, 3.0, 4.1, 5.5]  # longrope factors for head_dim 16 (8 of each)
LONG = [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0]
CASES: dict[str, dict[str, Any]] = {
    "llama3": {
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
    },
    "linear": {"rope_scaling": {"rope_type": "linear", "factor": 4.0}},
    "dynamic": {"rope_scaling": {"type": "dynamic", "factor": 4.0}},
    "yarn": {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}},
    "longrope": {
        "original_max_position_embeddings": 32,
        "rope_scaling": {"rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG},
    },
    "mistral-window": {"model_type": "mistral", "sliding_window": 16},
    "qwen2-window": {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1},
}


def _hf_config(changes: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    base = dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, num_hidden_layers=2
    )
    merged = {**base, **changes}
    return AutoConfig.for_model(merged.pop("model_type", "llama"), **merged)


@pytest.mark.parametrize("case", ["llama3", "linear", "dynamic", "yarn", "longrope"])
def test_frequencies_are_transformers(case: str) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = _hf_config(CASES[case])
    kind = rope.rope_type(config.to_dict())
    got = rope.frequencies(config.to_dict(), 16)
    want, scaling = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    np.testing.assert_allclose(got.inv_freq, want.numpy(), rtol=2e-7)
    assert got.attention_scaling == pytest.approx(scaling, rel=1e-12)
    if case == "longrope":  # past original_max_position_embeddings: the long factors
        want, _ = ROPE_INIT_FUNCTIONS[kind](config, "cpu", seq_len=33)
        assert got.long_inv_freq is not None and got.switch == 32
        np.testing.assert_allclose(got.long_inv_freq, want.numpy(), rtol=2e-7)
        assert got.attention_scaling == pytest.approx(np.sqrt(1 + np.log(8) / np.log(32)))
    if case == "yarn":
        assert got.attention_scaling > 1.0  # mscale: cos and sin are scaled


def test_windows_and_layers_follow_the_config() -> None:
    mistral = {"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 32768}
    assert [attention_layers.window(mistral, i) for i in (0, 1)] == [4096, 4096]
    assert attention_layers.window({**mistral, "sliding_window": None}, 0) is None
    assert attention_layers.window({**mistral, "max_position_embeddings": 4096}, 0) is None
    qwen = {
        "model_type": "qwen2",
        "sliding_window": 32768,
        "max_position_embeddings": 65536,
        "max_window_layers": 1,
        "use_sliding_window": False,
    }
    assert attention_layers.window(qwen, 1) is None  # Qwen2.5 ships it off
    assert [attention_layers.window({**qwen, "use_sliding_window": True}, i) for i in (0, 1)] == [
        None,
        32768,
    ]
    smol = {"model_type": "smollm3", "no_rope_layers": [1, 1, 1, 0]}
    assert [attention_layers.rotary(smol, i) for i in range(4)] == [True, True, True, False]
    attrs = attention_layers.attributes({**mistral, "attention_multiplier": 0.015625}, 0, 64)
    assert attrs == {"do_rotary": 1, "local_window_size": 4096, "scale": 0.015625}
    assert "rope_scaling type 'mrope'" in str(rope.unsupported({"rope_scaling": {"type": "mrope"}}))
    phi35 = {
        **CASES["longrope"],
        "model_type": "phi3",
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
    }
    assert rope.unsupported(phi35) is None  # exact below the switch; see rope.py
    assert rope.unsupported({**phi35, "model_type": "llama"}) is None  # per pass, as tested below


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rope")
    model_dir = make_tiny_decoder("llama", root / "hf")  # head_dim 16, 256 positions
    return model_dir, export_decoder(model_dir, root / "onnx")


def _torch_run(model_dir: Path, changes: dict[str, Any], ids: list[int], new: int) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(str(model_dir))
    config = _hf_config({**source.config.to_dict(), **changes})
    model = AutoModelForCausalLM.from_config(config).eval()
    missing = model.load_state_dict(source.state_dict(), strict=False).missing_keys
    assert all(k.endswith("_proj.bias") for k in missing), missing  # Qwen2's: zeros
    for name, param in model.named_parameters():
        if name in missing:
            torch.nn.init.zeros_(param)
    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].numpy()
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids)),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return logits, out[0, len(ids) :].tolist()


@pytest.mark.parametrize(
    ("case", "prompt"),
    [
        ("llama3", 40),
        ("linear", 40),
        ("dynamic", 40),
        ("yarn", 40),
        ("longrope", 40),
        ("longrope", 28),
        ("mistral-window", 40),
        ("qwen2-window", 40),
    ],
)
def test_fused_matches_transformers(case: str, prompt: int, llama: tuple[Path, Path], tmp_path):
    """Past the window (16) and across longrope's switch (32): in the prompt's one pass (40) or
    during the greedy steps (28 + 8)."""
    model_dir, exported = llama
    config = {**json.loads((model_dir / "config.json").read_text()), **CASES[case]}
    info = decoder_graph.optimize(exported, tmp_path / "gqa.onnx", config=config)
    assert info["skipped"] is None and info["attention_layers_fused"] == 2
    ids = [(7 * i) % 300 + 3 for i in range(prompt)]
    got, tokens = run_steps(tmp_path / "gqa.onnx", ids, split=len(ids), steps=8)
    want, want_tokens = _torch_run(model_dir, CASES[case], ids, 8)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert tokens == want_tokens
    if case != "dynamic":  # the case changes the numbers: the test is not blind to it
        plain, _ = _torch_run(model_dir, {}, ids, 1)
        assert np.abs(plain - want).max() > 1e-3
