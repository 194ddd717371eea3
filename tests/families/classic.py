"""The classic open-weight decoders: Falcon, BLOOM, GPT-J, GPT-Neo, Pythia (GPT-NeoX), Phi-2 and
OpenAI's gpt-oss.

Each config copies the real checkpoint's config.json fields (named in ``REAL``) scaled down to 2
layers and 4 heads. The head size is the real model's where onnxruntime's GroupQueryAttention needs
it to take the partial rotary step (its rotary width must be a multiple of 16): Pythia 64 (16
rotary), GPT-J 64 (16 rotary: 6B's 64-of-256 ratio), Phi-2 80 (32 rotary, as Phi-2); the others
hidden 64. ``initializer_range`` is 0.2 for the reason tests/decoders.py gives.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from tests.decoders import train_bpe

# The checkpoint each tiny config copies.
REAL = {
    "falcon": "tiiuae/falcon-7b",
    "bloom": "bigscience/bloom-560m",
    "gptj": "EleutherAI/gpt-j-6b",
    "gpt_neo": "EleutherAI/gpt-neo-125m",
    "gpt_neox": "EleutherAI/pythia-160m",
    "phi": "microsoft/phi-2",
    "gpt_oss": "openai/gpt-oss-20b",
}

CONFIGS: dict[str, dict[str, Any]] = {
    # falcon-7b: multi-query (one KV head), parallel attention + MLP, no biases, RoPE, tied.
    "falcon": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        alibi=False,
        bias=False,
        multi_query=True,
        new_decoder_architecture=False,
        parallel_attn=True,
        apply_residual_connection_post_layernorm=False,
        layer_norm_epsilon=1e-5,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
    # bloom-560m: ALiBi, embedding LayerNorm, fused query_key_value, tied; no position limit.
    "bloom": dict(
        hidden_size=64,
        n_layer=2,
        n_head=4,
        apply_residual_connection_post_layernorm=False,
        layer_norm_epsilon=1e-5,
        pretraining_tp=1,
        slow_but_exact=False,
        attention_softmax_in_fp32=True,
        masked_softmax_fusion=True,
        bias_dropout_fusion=True,
        skip_bias_add=True,
        skip_bias_add_qkv=False,
        offset_alibi=100,
        tie_word_embeddings=True,
    ),
    # gpt-j-6b: rotary on the first quarter of each head, interleaved (rotate_every_two),
    # attention and MLP in parallel from one LayerNorm, untied lm_head with a bias.
    "gptj": dict(
        n_embd=256,
        n_layer=2,
        n_head=4,
        rotary_dim=16,
        n_positions=256,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        rotary=True,
        scale_attn_weights=True,
        tie_word_embeddings=False,
    ),
    # gpt-neo-125m: learned positions, global and local (windowed) layers alternating, no
    # 1/sqrt(d) scaling of the attention scores, tied. The window is cut so that the tests' prompts
    # and generations cross it.
    "gpt_neo": dict(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
        max_position_embeddings=256,
        intermediate_size=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
    ),
    # pythia-160m: rotary on 25% of each head, parallel residual, fused query_key_value, untied.
    "gpt_neox": dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=1024,
        hidden_act="gelu",
        rotary_pct=0.25,
        rotary_emb_base=10000,
        max_position_embeddings=256,
        layer_norm_eps=1e-5,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    ),
    # phi-2: rotary on 40% of each head, parallel attention + MLP, dense / fc1 / fc2, untied.
    "phi": dict(
        hidden_size=320,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=1280,
        hidden_act="gelu_new",
        partial_rotary_factor=0.4,
        qk_layernorm=False,
        rope_theta=10000.0,
        rope_scaling=None,
        max_position_embeddings=256,
        layer_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    # gpt-oss-20b: mixture of experts (32, 4 a token), attention sinks, sliding window on every
    # other layer, YaRN RoPE, biased attention, untied. Scaled: 4 experts, 2 a token.
    "gpt_oss": dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        experts_per_token=2,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=256,
        initial_context_length=32,
        rope_theta=150000.0,
        rope_scaling={
            "rope_type": "yarn",
            "factor": 8.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 32,
        },
        attention_bias=True,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        swiglu_limit=7.0,
        router_aux_loss_coef=0.9,
        output_router_logits=False,
        tie_word_embeddings=False,
    ),
}


def make_tiny_classic(model_type: str, dest: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random ``model_type`` (a key of CONFIGS, ``overrides`` on top) and a GPT-2-style
    tokenizer to ``dest``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tokenizer = train_bpe("gpt2")  # GPT-2's byte-level BPE and <|endoftext|>, as these ship
    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        bos_token_id=eos,
        eos_token_id=eos,
        initializer_range=0.2,
        **{**CONFIGS[model_type], **overrides},
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, bos_token_id=eos, do_sample=False)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


TINY: dict[str, Callable[[Path], Path]] = {kind: partial(make_tiny_classic, kind) for kind in CONFIGS}
