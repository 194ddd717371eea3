"""Mixture-of-experts decoders: Mixtral, Qwen1.5-MoE (qwen2_moe), Qwen3-MoE, OLMoE, Granite-MoE, PhiMoE.

Each config copies the real checkpoint's config.json (named in ``REAL``) scaled to 2 layers,
hidden 64, 4 experts with 2 a token (the real models' k of 2 to 8 out of 8 to 128), keeping its
routing switches (``norm_topk_prob``), shared expert, biases, multipliers and q/k norms. gpt-oss
is in classic.py. ``initializer_range`` is 0.2 for the reason tests/decoders.py gives.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from tests.decoders import train_bpe

REAL = {
    "mixtral": "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "qwen2_moe": "Qwen/Qwen1.5-MoE-A2.7B-Chat",
    "qwen3_moe": "Qwen/Qwen3-30B-A3B",
    "olmoe": "allenai/OLMoE-1B-7B-0924-Instruct",
    "granitemoe": "ibm-granite/granite-3.0-1b-a400m-instruct",
    "phimoe": "microsoft/Phi-3.5-MoE-instruct",
}

CONFIGS: dict[str, dict[str, Any]] = {
    # Mixtral-8x7B: 8 experts, 2 a token, renormalised; 32 query heads over 8 KV heads; untied.
    "mixtral": dict(
        num_key_value_heads=2, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
        rope_theta=1e6, sliding_window=None, rms_norm_eps=1e-5, tie_word_embeddings=False,
    ),
    # Qwen1.5-MoE-A2.7B: 60 experts, 4 a token, not renormalised, a shared expert behind a sigmoid
    # gate, q/k/v biases, a MoE block on every layer.
    "qwen2_moe": dict(
        num_key_value_heads=4, intermediate_size=128, moe_intermediate_size=32,
        shared_expert_intermediate_size=128, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[], rope_theta=1e6,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    # Qwen3-30B-A3B: 128 experts, 8 a token, renormalised; q/k RMSNorm; 32 heads over 4, head 128.
    "qwen3_moe": dict(
        num_key_value_heads=2, head_dim=16, intermediate_size=128, moe_intermediate_size=32,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
    ),
    # OLMoE-1B-7B: 64 experts, 8 a token, not renormalised; q/k RMSNorm over the whole projection.
    "olmoe": dict(
        num_key_value_heads=4, intermediate_size=32, num_experts=4, num_experts_per_tok=2,
        norm_topk_prob=False, clip_qkv=None, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    # Granite-3.0-1B-A400M: 32 experts, 8 a token (softmax of the top-k logits); Granite's
    # embedding, residual, attention and logit multipliers; tied.
    "granitemoe": dict(
        num_key_value_heads=2, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
        embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625,
        logits_scaling=6.0, rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    ),
    # Phi-3.5-MoE: 16 experts, 2 a token through sparsemixer (jitter 0.01); LayerNorm; attention
    # and lm_head biases. (Its longrope scaling is not copied: a 256-position tiny model.)
    "phimoe": dict(
        num_key_value_heads=2, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
        router_jitter_noise=0.01, input_jitter_noise=0.01, attention_bias=True, lm_head_bias=True,
        rope_theta=10000.0, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False,
    ),
}  # fmt: skip


def make_tiny_moe(model_type: str, dest: Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a tiny random ``model_type`` (a key of CONFIGS, ``overrides`` on top) and a GPT-2-style
    tokenizer to ``dest``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    tokenizer = train_bpe("gpt2")
    eos = tokenizer.eos_token_id
    fields = {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "max_position_embeddings": 256, **CONFIGS[model_type], **overrides,
    }  # fmt: skip
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), bos_token_id=eos, eos_token_id=eos,
        pad_token_id=eos, initializer_range=0.2, **fields,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, bos_token_id=eos, do_sample=False)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


TINY: dict[str, Callable[[Path], Path]] = {kind: partial(make_tiny_moe, kind) for kind in CONFIGS}
