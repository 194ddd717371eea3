"""Tiny random-weight decoders (Llama, Qwen2, GPT-2) with a byte-level BPE tokenizer trained here.

Nothing is downloaded: the tokenizer is trained on edgepipe's own evaluation texts and the weights
are random. ``initializer_range`` is large on purpose: with the default 0.02 a 32-wide model's
logits are nearly flat, and greedy argmax would hinge on float rounding.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# A ChatML-style template, as Qwen2 ships.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama 3's template as Meta ships it (each message trimmed, BOS first, system as its own turn).
LLAMA3 = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Gemma 3's template: no system role (a system message is folded into the first user turn),
# roles must alternate, the assistant is "model", user and assistant content trimmed.
GEMMA = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
# The chat template each test decoder's tokenizer carries; Llama and GPT-2 have none.
TEMPLATES = {"qwen2": CHATML, "mistral": LLAMA3, "phi3": GEMMA}
KINDS = ("llama", "qwen2", "gpt2")
# Built too by the pipeline tests: the other model types edgepipe supports.
MORE_KINDS = ("mistral", "phi3")


def byte_level_bpe(specials: list[str], vocab_size: int, unk: str | None = None) -> Any:
    """A byte-level BPE (tokenizers.Tokenizer) trained on edgepipe's built-in texts, ``specials``
    first in the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    from edgepipe.tasks.texts import builtin_texts

    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(builtin_texts("embedding"), trainer)
    return tok


def train_bpe(kind: str, vocab_size: int = 384):
    """A byte-level BPE tokenizer in the style of ``kind``'s own (specials, BOS handling)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    original, kind = kind, "llama" if kind in MORE_KINDS else kind  # Llama's specials for both
    specials = {
        "llama": ["<unk>", "<s>", "</s>"],
        "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "gpt2": ["<|endoftext|>"],
    }[kind]
    tok = byte_level_bpe(specials, vocab_size, "<unk>" if kind == "llama" else None)
    extra: dict[str, str] = {}
    if kind == "llama":  # Llama prepends BOS through its post-processor
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        extra = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    elif kind == "qwen2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        extra = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        extra = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=256,
        model_input_names=["input_ids", "attention_mask"],
        **extra,
    )
    fast.chat_template = TEMPLATES.get(original)
    return fast


def make_tiny_decoder(
    kind: str, dest: Path, seed: int = 0, tied: bool = True, hidden: int = 64, positions: int = 256
) -> Path:
    """Save a 2-layer random ``kind`` model (4 heads: head_dim 16 at hidden 64, the smallest
    GroupQueryAttention's CPU kernel takes) and its tokenizer to ``dest``."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        GenerationConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
    )

    tokenizer = train_bpe(kind)
    vocab = len(tokenizer)
    eos = tokenizer.eos_token_id
    # Llama, Mistral, Phi-3 and Qwen2 share their config's names; GPT-2 has its own.
    llama_style = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=positions,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        initializer_range=0.2,
    )
    if kind == "llama":
        config = LlamaConfig(**llama_style)
    elif kind == "mistral":
        config = MistralConfig(**llama_style)
    elif kind == "phi3":
        config = Phi3Config(**llama_style, original_max_position_embeddings=256, pad_token_id=eos)
    elif kind == "qwen2":
        config = Qwen2Config(**llama_style)
    elif kind == "gpt2":
        config = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=2,
            n_head=4,
            n_positions=positions,
            bos_token_id=eos,
            eos_token_id=eos,
            initializer_range=0.2,
        )
    else:
        raise ValueError(f"unknown decoder kind {kind!r}; one of {KINDS + MORE_KINDS}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config = GenerationConfig(eos_token_id=eos, bos_token_id=config.bos_token_id, do_sample=False)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def export_decoder(model_dir: Path, out: Path) -> Path:
    """optimum-onnx's plain text-generation-with-past export (no edgepipe rewrites)."""
    from optimum.exporters.onnx import main_export

    from edgepipe.stages.export import quiet

    with quiet():
        main_export(
            str(model_dir),
            str(out),
            task="text-generation-with-past",
            device="cpu",
            do_validation=False,
        )
    return out / "model.onnx"


def with_chat_template(model_dir: Path, dest: Path, template: str) -> Path:
    """A copy of ``model_dir`` at ``dest`` whose tokenizer carries ``template``."""
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(model_dir, dest)
    tokenizer = AutoTokenizer.from_pretrained(dest)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(dest)
    return dest
