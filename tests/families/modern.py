"""Today's small Llama-style models: Llama 3.2, Granite 3, SmolLM3, and Mistral with its window.

Each config copies the real checkpoint's config.json (its RoPE scaling, multipliers, NoPE layers,
window, tied table) scaled to 2 layers, hidden 64, 4 query heads over 1 KV head (the real 4:1
grouping). A key ``type@variant`` is a second tiny model of a registry family.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.decoders import train_bpe


def _save(dest: Path, config_class: str, tokenizer_kind: str, **fields: Any) -> Path:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    tokenizer = train_bpe(tokenizer_kind)
    config = getattr(transformers, config_class)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
        **{"num_key_value_heads": 1, **fields},
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=config.eos_token_id, bos_token_id=config.bos_token_id, do_sample=False
    )
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def llama_3_2(dest: Path) -> Path:
    """meta-llama/Llama-3.2-1B-Instruct: RoPE scaling llama3, theta 500k, 128k positions, tied."""
    return _save(
        dest,
        "LlamaConfig",
        "llama",
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )


def granite(dest: Path) -> Path:
    """ibm-granite/granite-3.3-2b-instruct: the four multipliers, theta 10M, tied."""
    return _save(
        dest,
        "GraniteConfig",
        "gpt2",
        max_position_embeddings=131072,
        rope_theta=10000000.0,
        attention_multiplier=0.015625,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        logits_scaling=8.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )


def smollm3(dest: Path) -> Path:
    """HuggingFaceTB/SmolLM3-3B: every 4th layer without RoPE (here every 2nd, for 2 layers),
    theta 5M, tied."""
    return _save(
        dest,
        "SmolLM3Config",
        "llama",
        max_position_embeddings=65536,
        rope_theta=5000000.0,
        no_rope_layer_interval=2,
        use_sliding_window=False,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
    )


def mistral_window(dest: Path) -> Path:
    """mistralai/Mistral-7B-v0.1: a sliding window of 4096 of 32768 positions (here 8, so that
    the harness's prompt and 12 new tokens run past it), untied."""
    return _save(
        dest,
        "MistralConfig",
        "llama",
        max_position_embeddings=32768,
        sliding_window=8,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


TINY: dict[str, Callable[[Path], Path]] = {
    "llama@3.2": llama_3_2,
    "granite": granite,
    "smollm3": smollm3,
    "mistral@window": mistral_window,
}
