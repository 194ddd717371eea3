"""The model families edgepipe builds: one registry entry per Hugging Face ``model_type``.

Each entry says which tasks the family is built for (the first is the default), whether its
decoder attention is rewritten to onnxruntime's fused GroupQueryAttention (graph/decoder_graph.py)
or why it keeps the exported attention, and real checkpoints of the family. The README's
supported-models table and ``edgepipe models`` are generated from it, and tests/test_families.py
builds a tiny random model of every entry (its config.json copies the real model's fields).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelError

EMBEDDING = "embedding"
GENERATION = "text-generation"


@dataclass(frozen=True)
class Family:
    model_type: str
    name: str
    tasks: tuple[str, ...]  # model tasks (config.TASK_KINDS' keys); the first is the default
    examples: tuple[str, ...] = ()  # hub ids of real checkpoints
    fused: bool = False  # decoders: attention rewritten to GroupQueryAttention
    plain_because: str = ""  # decoders on the exported attention: why
    plain_for: str = ""  # fused decoders: the configs that keep the exported attention, and why

    def attention(self) -> str:
        """The README's attention column."""
        if GENERATION not in self.tasks:
            return "encoder (as exported)"
        if not self.fused:
            return f"as exported: {self.plain_because}"
        note = f"; as exported: {self.plain_for}" if self.plain_for else ""
        return "fused (GroupQueryAttention)" + note


def _encoder(model_type: str, name: str, *examples: str) -> Family:
    return Family(model_type, name, (EMBEDDING,), examples)


def _decoder(
    model_type: str, name: str, *examples: str, plain: str = "", plain_for: str = ""
) -> Family:
    return Family(model_type, name, (GENERATION,), examples, not plain, plain, plain_for)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        _encoder("bert", "BERT, MiniLM, BGE, E5", "sentence-transformers/all-MiniLM-L6-v2"),
        _encoder("distilbert", "DistilBERT", "sentence-transformers/msmarco-distilbert-base-v4"),
        _encoder("roberta", "RoBERTa", "sentence-transformers/all-distilroberta-v1"),
        _encoder("xlm-roberta", "XLM-RoBERTa", "intfloat/multilingual-e5-small"),
        _encoder("mpnet", "MPNet", "sentence-transformers/all-mpnet-base-v2"),
        _encoder("electra", "ELECTRA", "google/electra-small-discriminator"),
        _decoder(
            "llama",
            "Llama, Llama 3.2, SmolLM2",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "meta-llama/Llama-3.2-1B-Instruct",
        ),
        _decoder(
            "mistral", "Mistral", "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.1"
        ),
        _decoder("qwen2", "Qwen2, Qwen2.5", "Qwen/Qwen2.5-0.5B-Instruct"),
        _decoder(
            "phi3",
            "Phi-3, Phi-3.5, Phi-4-mini",
            "microsoft/Phi-3-mini-4k-instruct",
            plain_for="longrope past its original length (Phi-3.5, Phi-4-mini: transformers "
            "recomputes the cache when a generation crosses it)",
        ),
        _decoder("granite", "Granite 3", "ibm-granite/granite-3.3-2b-instruct"),
        _decoder("smollm3", "SmolLM3", "HuggingFaceTB/SmolLM3-3B"),
        _decoder("gpt2", "GPT-2", "openai-community/gpt2", plain="learned positions, no RoPE"),
    )
}


def markdown_table() -> str:
    """The README's supported-models table (tests/test_families.py keeps the two in step)."""
    lines = [
        "| model_type | family | tasks | attention | e.g. |",
        "|---|---|---|---|---|",
    ]
    for f in FAMILIES.values():
        examples = ", ".join(f"`{e}`" for e in f.examples)
        lines.append(
            f"| `{f.model_type}` | {f.name} | {', '.join(f.tasks)} | {f.attention()} | {examples} |"
        )
    return "\n".join(lines) + "\n"


def supported() -> list[str]:
    return sorted(FAMILIES)


def family(model_type: str, where: str = "config.json") -> Family:
    """The registry entry of ``model_type``, or one line naming it and the supported list."""
    if model_type not in FAMILIES:
        raise ModelError(
            f"{where}: model_type '{model_type or '?'}' is not supported; supported: "
            f"{', '.join(supported())}"
        )
    return FAMILIES[model_type]


def fused(model_type: str) -> bool:
    found = FAMILIES.get(model_type)
    return bool(found and found.fused)


# The optimum-onnx export task of each model task.
EXPORT_TASKS = {EMBEDDING: "feature-extraction", GENERATION: "text-generation-with-past"}
