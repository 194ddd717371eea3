"""The q/k-norm and soft-capped families: Qwen3, OLMo 2, Gemma, Gemma 2, Gemma 3 (text).

Each config copies its real checkpoint's fields (named beside it), scaled to 2 layers, hidden 64,
4 heads of 16. Where a real value would leave a feature untested at this size the tiny one differs,
and the comment says why: the sliding windows are 8 tokens (every test prompt with its answer is
longer), the attention soft-cap is small enough for tanh to bend a random model's scores, Gemma 2's
``query_pre_attn_scalar`` differs from head_dim (as gemma-2-27b's does) so the scale is checked, and
Gemma 3 has one global layer in two (the 1B has one in six) with gemma-3-4b's linear RoPE scaling.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.decoders import GEMMA, byte_level_bpe, train_bpe

HIDDEN, HEADS, HEAD_DIM = 64, 4, 16
WINDOW = 8  # sliding window of the tiny Gemma 2 / Gemma 3 (real: 4096, 512)
# Gemma's SentencePiece vocabulary begins <pad>, <eos>, <bos>, <unk>; its chat turns are specials.
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]


def gemma_tokenizer(vocab_size: int = 384) -> Any:
    """A byte-level BPE tokenizer with Gemma's special tokens and ids (pad 0, eos 1, bos 2), BOS
    prepended, and Gemma's chat template."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = byte_level_bpe(GEMMA_SPECIALS, vocab_size, "<unk>")
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=256,
        model_input_names=["input_ids", "attention_mask"],
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    fast.chat_template = GEMMA
    return fast


def _save(config: Any, tokenizer: Any, dest: Path, eos: list[int], seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, bos_token_id=config.bos_token_id, do_sample=False)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def make_qwen3(dest: Path) -> Path:
    """Qwen/Qwen3-0.6B: RMSNorm over each head of q and k before RoPE, head_dim set apart from
    hidden/heads, 16 heads / 8 KV heads, rope_theta 1e6, tied, no sliding window."""
    from transformers import Qwen3Config

    tokenizer = train_bpe("qwen2")  # Qwen3 keeps Qwen2's vocabulary, specials and ChatML
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=3 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS // 2,
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        rope_scaling=None,
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=None,
        max_window_layers=2,
        attention_bias=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
    )
    return _save(config, tokenizer, dest, [tokenizer.eos_token_id])


def make_olmo2(dest: Path) -> Path:
    """allenai/OLMo-2-0425-1B: RMSNorm over the whole q and k projections, norms after attention
    and after the MLP (not before), 16 heads = KV heads, rope_theta 5e5, untied."""
    from transformers import Olmo2Config

    tokenizer = train_bpe("gpt2")  # OLMo 2's GPT-style BPE: <|endoftext|> ends a text, no BOS
    eos = tokenizer.eos_token_id
    config = Olmo2Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        rope_theta=5e5,
        rope_scaling=None,
        tie_word_embeddings=False,
        attention_bias=False,
        pad_token_id=eos,
        bos_token_id=None,
        eos_token_id=eos,
        initializer_range=0.2,
    )
    return _save(config, tokenizer, dest, [eos])


def _gemma_eos(tokenizer: Any) -> list[int]:
    """<eos> and <end_of_turn>, as the instruction-tuned checkpoints stop on (1 and 106)."""
    return [1, int(tokenizer.convert_tokens_to_ids("<end_of_turn>"))]


def _gemma_common(tokenizer: Any) -> dict[str, Any]:
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        head_dim=HEAD_DIM,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        bos_token_id=2,
        tie_word_embeddings=True,
        attention_bias=False,
        initializer_range=0.2,
    )


def make_gemma(dest: Path) -> Path:
    """google/gemma-2b: embeddings scaled by sqrt(hidden), GeGLU MLP, RMSNorm by (1 + weight),
    head_dim set apart (256), one KV head (8 query heads), tied."""
    from transformers import GemmaConfig

    tokenizer = gemma_tokenizer()
    config = GemmaConfig(
        **_gemma_common(tokenizer),
        num_key_value_heads=1,
        intermediate_size=8 * HIDDEN,
        hidden_act="gelu",
        rope_theta=10000.0,
        eos_token_id=1,
    )
    return _save(config, tokenizer, dest, _gemma_eos(tokenizer))


def make_gemma2(dest: Path) -> Path:
    """google/gemma-2-2b: soft-capped attention scores (50) and logits (30), a sliding window on
    every other layer (the first of each pair), ``query_pre_attn_scalar``, pre- and post-norms."""
    from transformers import Gemma2Config

    tokenizer = gemma_tokenizer()
    config = Gemma2Config(
        **_gemma_common(tokenizer),
        num_key_value_heads=HEADS // 2,
        intermediate_size=4 * HIDDEN,
        hidden_activation="gelu_pytorch_tanh",
        rope_theta=10000.0,
        eos_token_id=1,
        # 50 on the real scores; the tiny model's are ~1-10, and a cap of 5 bends them.
        attn_logit_softcapping=5.0,
        final_logit_softcapping=30.0,
        # gemma-2-2b's is head_dim (256), gemma-2-27b's is not (144 for 128): not head_dim here,
        # so a GroupQueryAttention left at its default scale would be wrong.
        query_pre_attn_scalar=2 * HEAD_DIM,
        sliding_window=WINDOW,
        cache_implementation="hybrid",
    )
    return _save(config, tokenizer, dest, _gemma_eos(tokenizer))


def make_gemma3_text(dest: Path) -> Path:
    """google/gemma-3-1b-it: RMSNorm (1 + weight) over each head of q and k, sliding windows on
    local layers with their own RoPE base (rope_local_base_freq), global layers with rope_theta
    1e6 and (as gemma-3-4b) linear RoPE scaling, 4 heads / 1 KV head, no soft-capping."""
    from transformers import Gemma3TextConfig

    tokenizer = gemma_tokenizer()
    config = Gemma3TextConfig(
        **_gemma_common(tokenizer),
        num_key_value_heads=1,
        intermediate_size=6 * HIDDEN,
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=HEAD_DIM,
        rope_theta=1e6,
        rope_local_base_freq=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        sliding_window=WINDOW,
        layer_types=["sliding_attention", "full_attention"],
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        eos_token_id=_gemma_eos(tokenizer),
        cache_implementation="hybrid",
    )
    return _save(config, tokenizer, dest, _gemma_eos(tokenizer))


TINY: dict[str, Callable[[Path], Path]] = {
    "qwen3": make_qwen3,
    "olmo2": make_olmo2,
    "gemma": make_gemma,
    "gemma2": make_gemma2,
    "gemma3_text": make_gemma3_text,
}
