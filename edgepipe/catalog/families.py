"""The model families edgepipe builds: one registry entry per Hugging Face ``model_type``.

Each entry says which tasks the family is built for (the first is the default), whether its
decoder attention is rewritten to onnxruntime's fused GroupQueryAttention (graph/decoder_graph.py)
or why it keeps the exported attention, and real checkpoints of the family. The docs'
supported-models table (docs/guide/models.md) and ``edgepipe models`` are generated from it, and tests/test_families.py
builds a tiny random model of every entry (its config.json copies the real model's fields).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ModelError
from ..runtime.tasks import Task

EMBEDDING, GENERATION, CLASSIFICATION, RERANKING = Task.EMBEDDING, Task.GENERATION, Task.CLASSIFICATION, Task.RERANKING
# What a *ForSequenceClassification checkpoint of the family can be built for: labels (intents,
# sentiment) or, with one output, a cross-encoder's relevance score.
HEADS = (CLASSIFICATION, RERANKING)


@dataclass(frozen=True)
class Family:
    model_type: str
    name: str
    tasks: tuple[Task, ...]  # the first is the default
    examples: tuple[str, ...] = ()  # hub ids of real checkpoints
    fused: bool = False  # decoders: attention rewritten to GroupQueryAttention
    plain_because: str = ""  # decoders on the exported attention: why
    plain_for: str = ""  # fused decoders: the configs that keep the exported attention, and why
    # Encoders whose learned positions start after the padding id (RoBERTa's padding_idx + 1): of
    # max_position_embeddings rows, pad_token_id + 1 are never used for a token.
    positions_after_pad: bool = False
    # Mixture-of-experts decoders: how the experts run (stages/moe_export.py, graph/moe.py).
    experts: str = ""

    def task_names(self) -> str:
        """The tasks as bundles name them (the models table's tasks column)."""
        return ", ".join(t.manifest_name for t in self.tasks)

    def attention(self) -> str:
        """The models table's attention column."""
        if GENERATION not in self.tasks:
            return "encoder (as exported)"
        if not self.fused:
            experts = f"; experts {self.experts}" if self.experts else ""
            return f"as exported: {self.plain_because}" + experts
        note = f"; as exported: {self.plain_for}" if self.plain_for else ""
        experts = f"; experts {self.experts}" if self.experts else ""
        return "fused (GroupQueryAttention)" + note + experts


def _encoder(model_type: str, name: str, *examples: str, after_pad: bool = False, heads: bool = False) -> Family:
    tasks = (EMBEDDING, *(HEADS if heads else ()))
    return Family(model_type, name, tasks, examples, positions_after_pad=after_pad)


def _decoder(
    model_type: str, name: str, *examples: str, plain: str = "", plain_for: str = "", experts: str = ""
) -> Family:
    return Family(model_type, name, (GENERATION,), examples, not plain, plain, plain_for, experts=experts)


# Every token computes only its router's top-k experts: one onnxruntime MoE node per block, QMoE
# with blockwise int4 (or 8-bit) experts once quantized, GPTQ on each expert's own routed rows.
ROUTED = "routed (MoE: a token's top-k only), int4 experts (QMoE, GPTQ per expert)"


FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        _encoder(
            "bert",
            "BERT, MiniLM, BGE, E5",
            "sentence-transformers/all-MiniLM-L6-v2",
            "BAAI/bge-small-en-v1.5",
            "intfloat/multilingual-e5-small",
            "cross-encoder/ms-marco-MiniLM-L-6-v2",
            heads=True,
        ),
        _encoder("distilbert", "DistilBERT", "sentence-transformers/msmarco-distilbert-base-v4"),
        _encoder(
            "roberta",
            "RoBERTa",
            "sentence-transformers/all-distilroberta-v1",
            after_pad=True,
            heads=True,
        ),
        _encoder(
            "xlm-roberta",
            "XLM-RoBERTa, BGE-M3, multilingual E5",
            "BAAI/bge-m3",
            "intfloat/multilingual-e5-base",
            "BAAI/bge-reranker-base",
            after_pad=True,
            heads=True,
        ),
        _encoder("camembert", "CamemBERT", "almanach/camembert-base", after_pad=True),
        _encoder("mpnet", "MPNet", "sentence-transformers/all-mpnet-base-v2", after_pad=True),
        _encoder("electra", "ELECTRA", "google/electra-small-discriminator"),
        _encoder("deberta-v2", "DeBERTa-v2, DeBERTa-v3", "microsoft/deberta-v3-small"),
        _encoder("modernbert", "ModernBERT", "answerdotai/ModernBERT-base"),
        _decoder(
            "llama",
            "Llama, Llama 3.2, SmolLM2",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "meta-llama/Llama-3.2-1B-Instruct",
        ),
        _decoder("mistral", "Mistral", "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mistral-7B-v0.1"),
        _decoder("qwen2", "Qwen2, Qwen2.5", "Qwen/Qwen2.5-0.5B-Instruct"),
        _decoder(
            "phi3",
            "Phi-3, Phi-3.5, Phi-4-mini",
            "microsoft/Phi-3-mini-4k-instruct",
            "microsoft/Phi-3.5-mini-instruct",
        ),
        _decoder("granite", "Granite 3", "ibm-granite/granite-3.3-2b-instruct"),
        _decoder("smollm3", "SmolLM3", "HuggingFaceTB/SmolLM3-3B"),
        _decoder("gpt2", "GPT-2", "openai-community/gpt2", plain="learned positions, no RoPE"),
        # q/k RMSNorm before RoPE stays in the graph (GroupQueryAttention reads its output):
        # onnxruntime 1.32's q_norm_weight/k_norm_weight inputs are CUDA/WebGPU-only.
        _decoder("qwen3", "Qwen3", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B"),
        _decoder("olmo2", "OLMo 2", "allenai/OLMo-2-0425-1B", "allenai/OLMo-2-0425-1B-Instruct"),
        _decoder("gemma", "Gemma", "google/gemma-2b", "google/gemma-2b-it"),
        # Soft-capped scores -> softcap, query_pre_attn_scalar -> scale, sliding layers ->
        # local_window_size; the final logit soft-cap stays in the graph after the lm_head.
        _decoder("gemma2", "Gemma 2", "google/gemma-2-2b-it", "google/gemma-2-2b"),
        # Local layers: a second cos/sin table (rope_local_base_freq) and a window; global layers:
        # rope_theta with linear scaling (4B and up).
        _decoder("gemma3_text", "Gemma 3 (text)", "google/gemma-3-1b-it", "google/gemma-3-270m-it"),
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
            plain="attention sinks, YaRN RoPE (no rewrite for them yet)",
            experts=ROUTED + "; clamped SwiGLU (alpha 1.702, limit 7) and biases in the node",
        ),
        _decoder(
            "mixtral",
            "Mixtral",
            "mistralai/Mixtral-8x7B-Instruct-v0.1",
            "mistralai/Mixtral-8x22B-Instruct-v0.1",
            experts=ROUTED,
        ),
        _decoder(
            "qwen2_moe",
            "Qwen1.5-MoE, Qwen2-MoE",
            "Qwen/Qwen1.5-MoE-A2.7B-Chat",
            "Qwen/Qwen2-57B-A14B-Instruct",
            experts=ROUTED + "; the shared expert dense beside it",
        ),
        _decoder("qwen3_moe", "Qwen3-MoE", "Qwen/Qwen3-30B-A3B", experts=ROUTED),
        _decoder("olmoe", "OLMoE", "allenai/OLMoE-1B-7B-0924-Instruct", experts=ROUTED),
        _decoder(
            "granitemoe",
            "Granite 3.0 MoE",
            "ibm-granite/granite-3.0-1b-a400m-instruct",
            "ibm-granite/granite-3.0-3b-a800m-instruct",
            experts=ROUTED,
        ),
        _decoder(
            "phimoe",
            "Phi-3.5-MoE",
            "microsoft/Phi-3.5-MoE-instruct",
            # Its int4/int8 builds miss the guard on the tiny model (tests/test_families.py).
            experts="routed (MoE: a token's top-k only; sparsemixer routing computed in the graph); quantized "
            "experts flip its near-tie routing: int4/int8 missed the guard on the tiny model (docs/moe.md)",
        ),
    )
}


def markdown_table() -> str:
    """The supported-models table of docs/guide/models.md (tests/test_families.py keeps the two in step)."""
    lines = [
        "| model_type | family | tasks | attention | e.g. |",
        "|---|---|---|---|---|",
    ]
    for f in FAMILIES.values():
        examples = ", ".join(f"`{e}`" for e in f.examples)
        lines.append(f"| `{f.model_type}` | {f.name} | {f.task_names()} | {f.attention()} | {examples} |")
    return "\n".join(lines) + "\n"


def supported() -> list[str]:
    return sorted(FAMILIES)


def family(model_type: str, where: str = "config.json") -> Family:
    """The registry entry of ``model_type``, or one line naming it and the supported list."""
    if model_type not in FAMILIES:
        raise ModelError(
            f"{where}: model_type '{model_type or '?'}' is not supported; supported: {', '.join(supported())}"
        )
    return FAMILIES[model_type]


def max_positions(config: dict[str, Any]) -> int:
    """The most tokens an encoder's config allows: its position rows, less those before the first
    position where they start after the padding id."""
    rows = int(config.get("max_position_embeddings") or 512)
    found = FAMILIES.get(str(config.get("model_type", "")))
    if found and found.positions_after_pad:
        rows -= int(config.get("pad_token_id") or 0) + 1
    return rows


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


def torch_attention(config: dict[str, object]) -> str | None:
    """The transformers attention implementation a PyTorch reference of ``config`` loads with:
    eager where the default (sdpa) drops the scores' soft-cap (Gemma 2), else the default."""
    return "eager" if config.get("attn_logit_softcapping") else None


# The optimum-onnx export task of each task kind.
EXPORT_TASKS: dict[Task, str] = {
    EMBEDDING: "feature-extraction",
    GENERATION: "text-generation-with-past",
    CLASSIFICATION: "text-classification",
    RERANKING: "text-classification",
}
