"""Cross-encoder reranking (on-device search): a one-output *ForSequenceClassification model's
relevance score of (query, document) pairs, held to fp32's by each query's rank correlation and
the largest score error."""

from __future__ import annotations

from ..engine.spec import BuildContext, BuildResult, TaskSpec
from ..runtime.scorer import Item
from ..runtime.tasks import Task
from . import scoring
from .scoring import bench_summary
from .texts import builtin_pairs, load_pairs

KIND = Task.RERANKING
EXAMPLE = 'rerank "kitchen lights" "turn on the kitchen lights" "play some jazz"'

__all__ = ["EXAMPLE", "KIND", "SPEC", "bench_summary", "run"]


def run(ctx: BuildContext) -> BuildResult:
    """Export, reference, the recipe search and the bundle of a reranker: evaluated on the
    --eval-data pairs (JSONL {"query", "document"}), or the built-in pairs (texts.builtin_pairs)."""
    pairs, queries = load_pairs(ctx.spec.eval_data) if ctx.spec.eval_data else builtin_pairs()
    items: list[Item] = list(pairs)
    return scoring.run(ctx, KIND, items, queries, EXAMPLE)


SPEC = TaskSpec(KIND, run, EXAMPLE)
