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

    def attention(self) -> str:
        """The README's attention column."""
        if GENERATION not in self.tasks:
            return "encoder (as exported)"
        return "fused (GroupQueryAttention)" if self.fused else f"as exported: {self.plain_because}"


def _encoder(model_type: str, name: str, *examples: str) -> Family:
    return Family(model_type, name, (EMBEDDING,), examples)


def _decoder(model_type: str, name: str, *examples: str, plain: str = "") -> Family:
    return Family(model_type, name, (GENERATION,), examples, fused=not plain, plain_because=plain)


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        _encoder("bert", "BERT, MiniLM, BGE, E5", "sentence-transformers/all-MiniLM-L6-v2"),
        _encoder("distilbert", "DistilBERT", "sentence-transformers/msmarco-distilbert-base-v4"),
        _encoder("roberta", "RoBERTa", "sentence-transformers/all-distilroberta-v1"),
        _encoder("xlm-roberta", "XLM-RoBERTa", "intfloat/multilingual-e5-small"),
        _encoder("mpnet", "MPNet", "sentence-transformers/all-mpnet-base-v2"),
        _encoder("electra", "ELECTRA", "google/electra-small-discriminator"),
        _decoder("llama", "Llama, SmolLM2", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        _decoder("mistral", "Mistral", "mistralai/Mistral-7B-Instruct-v0.3"),
        _decoder("qwen2", "Qwen2, Qwen2.5", "Qwen/Qwen2.5-0.5B-Instruct"),
        _decoder(
            "phi3",
            "Phi-3, Phi-3.5, Phi-4-mini",
            "microsoft/Phi-3-mini-4k-instruct",
            plain="packed qkv_proj (no rewrite for it yet)",
        ),
        _decoder("gpt2", "GPT-2", "openai-community/gpt2", plain="learned positions, no RoPE"),
        _decoder(
            "falcon",
            "Falcon-7B (multi-query)",
            "tiiuae/falcon-7b-instruct",
            "tiiuae/falcon-7b",
        ),
        _decoder(
            "bloom",
            "BLOOM, BLOOMZ",
            "bigscience/bloom-560m",
            "bigscience/bloomz-1b1",
            plain="ALiBi position bias (GroupQueryAttention has no ALiBi)",
        ),
        _decoder(
            "gptj",
            "GPT-J",
            "EleutherAI/gpt-j-6b",
        ),
        _decoder(
            "gpt_neo",
            "GPT-Neo",
            "EleutherAI/gpt-neo-125m",
            "EleutherAI/gpt-neo-1.3B",
        ),
        _decoder(
            "gpt_neox",
            "GPT-NeoX, Pythia",
            "EleutherAI/pythia-160m",
            "EleutherAI/pythia-1b-deduped",
        ),
        _decoder(
            "phi",
            "Phi-1.5, Phi-2",
            "microsoft/phi-2",
            "microsoft/phi-1_5",
        ),
        _decoder(
            "gpt_oss",
            "gpt-oss",
            "openai/gpt-oss-20b",
            plain="attention sinks, YaRN RoPE (no rewrite for them yet); its experts run "
            "densely and stay float32 (int4 takes 2-D weights, theirs are 3-D)",
        ),
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


# Variants of a family that its optimum-onnx export cannot take: model_type -> (config.json field,
# its refused value, why). Checked when the model is resolved, before any stage runs.
REFUSED: dict[str, tuple[tuple[str, object, str], ...]] = {
    "falcon": (
        (
            "new_decoder_architecture",
            True,
            "Falcon-40B/180B/Falcon2-11B's layout: optimum-onnx 0.1.0's export feeds a cache of "
            "num_kv_heads heads where transformers keeps one per query head, and fails",
        ),
    ),
}


def check_config(model_type: str, config: dict[str, object], where: str = "config.json") -> None:
    """One line, naming the field, when ``config`` is a variant of its family that is refused."""
    for key, value, why in REFUSED.get(model_type, ()):
        if config.get(key) == value:
            raise ModelError(f"{where}: {model_type} with {key}: {value} is not supported: {why}")


def fused(model_type: str) -> bool:
    found = FAMILIES.get(model_type)
    return bool(found and found.fused)


# The optimum-onnx export task of each model task.
EXPORT_TASKS = {EMBEDDING: "feature-extraction", GENERATION: "text-generation-with-past"}
