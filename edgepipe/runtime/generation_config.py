"""A decoder bundle's runtime.json (GenerationConfig) and one generation's result (Generation)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .sampling import GenerationError
from .tasks import Task


@dataclass(frozen=True)
class GenerationConfig:
    """What the runtime needs to know about an exported decoder (stored as runtime.json)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    eos_token_ids: tuple[int, ...]
    max_length: int  # max_position_embeddings: prompt and generated tokens together
    # The model's own chat template (Jinja source; or named ones, "default" among them), rendered
    # at request time with the special tokens it sees; chat_off says in one line why there is none.
    chat_template: str | dict[str, str] | None = None
    special_tokens: dict[str, Any] = field(default_factory=dict)
    chat_off: str | None = None
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    task: str = Task.GENERATION.manifest_name
    ram_mb: float | None = None  # the target's memory budget: the default context's KV cache fits

    @classmethod
    def load(cls, path: Path) -> GenerationConfig:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("eos_token_ids", "providers"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as exc:
            raise GenerationError(f"runtime.json is not a text-generation config: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "eos_token_ids": list(self.eos_token_ids),
            "max_length": self.max_length,
            "chat_template": self.chat_template,
            "special_tokens": self.special_tokens,
            "chat_off": self.chat_off,
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "providers": list(self.providers),
            "ram_mb": self.ram_mb,
        }


@dataclass
class Generation:
    """One generate() call's result."""

    text: str
    token_ids: list[int]  # the generated ids only (an EOS that ended it included)
    stop_reason: str  # "eos" | "stop" | "grammar" (its grammar complete) | "length"
    timings: dict[str, float] = field(default_factory=dict)
    # With generate(logprobs=k): per generated token (id, logprob, the k likeliest (id, logprob)).
    logprobs: list[tuple[int, float, list[tuple[int, float]]]] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "stop_reason": self.stop_reason,
            "timings": self.timings,
        }
