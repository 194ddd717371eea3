"""Text classification (intents, sentiment, routing a command): a *ForSequenceClassification
model's labels, held to fp32's by label agreement and the labels' probability KL."""

from __future__ import annotations

from ..engine.spec import BuildContext, BuildResult, TaskSpec
from ..runtime.tasks import Task
from . import scoring
from .scoring import bench_summary

KIND = Task.CLASSIFICATION
EXAMPLE = 'classify "turn on the kitchen lights"'

__all__ = ["EXAMPLE", "KIND", "SPEC", "bench_summary", "run"]


def run(ctx: BuildContext) -> BuildResult:
    """Export, reference, the recipe search and the bundle of a text classifier."""
    return scoring.run(ctx, KIND, list(ctx.texts), None, EXAMPLE)


SPEC = TaskSpec(KIND, run, EXAMPLE)
