"""The published chat templates (tests/data/chat_templates) on tokenizers built here, and the
conversations the tests render with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA = Path(__file__).parent.parent / "data" / "chat_templates"
# Each family's special tokens as its tokenizer names them.
SPECIALS: dict[str, dict[str, str]] = {
    "qwen3": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "deepseek-r1-distill": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
    "llama-3.2": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "smollm2": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
    "gemma-3": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "gpt-oss": {"bos_token": "<|startoftext|>", "eos_token": "<|return|>"},
}
FAMILIES = tuple(SPECIALS)


def source(family: str) -> str:
    return (DATA / f"{family}.jinja").read_text(encoding="utf-8")


def tokenizer(family: str) -> Any:
    """A fast tokenizer with the family's special tokens and published template (a tiny vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = sorted(set(SPECIALS[family].values()))
    vocab = {token: i for i, token in enumerate([*specials, "[UNK]"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", **SPECIALS[family])
    fast.chat_template = source(family)
    return fast


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather now in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}}
# Not the build's own check conversations: other texts, lengths and turn counts.
CONVERSATIONS: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = {
    "user": ([{"role": "user", "content": "What is the capital of France?"}], None),
    "system": (
        [{"role": "system", "content": "  Be terse.\n"}, {"role": "user", "content": "Capital of Peru?"}],
        None,
    ),
    "multi-turn": (
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "  tell me a joke\n"},
            {"role": "assistant", "content": "\nWhy did the chicken cross the road?  "},
            {"role": "user", "content": "why — in ünïcode?"},
        ],
        None,
    ),
    "reasoning history": (
        [
            {"role": "system", "content": "Think step by step."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nTwo and two make four.\n</think>\n\n4"},
            {"role": "user", "content": "and times 3?"},
        ],
        None,
    ),
    "tools": (
        [{"role": "system", "content": "You help."}, {"role": "user", "content": "Weather in Lyon?"}],
        [WEATHER],
    ),
    "tool result": (
        [
            {"role": "user", "content": "Weather in Lyon?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_7", "name": "get_weather", "content": '{"celsius": 9}'},
        ],
        [WEATHER],
    ),
}
