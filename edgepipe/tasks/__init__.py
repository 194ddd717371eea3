"""The task registry: one module per task kind saying what differs for it (export, reference,
scoring, bench, runtime config). A kind is added by its module and one line in TASKS."""

from __future__ import annotations

from types import ModuleType

from . import classification, embedding, generation, reranking

# task kind (the profiles' "embedding", "generation", "classification", "reranking") -> its
# module: KIND; NAME, the model's task in the manifest and runtime.json; run(ctx) -> BuildResult;
# EXAMPLE, its runtime entry's command.
TASKS: dict[str, ModuleType] = {
    embedding.KIND: embedding,
    generation.KIND: generation,
    classification.KIND: classification,
    reranking.KIND: reranking,
}
