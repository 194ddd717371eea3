"""Text classification (intents, sentiment, routing a command): a *ForSequenceClassification
model's labels, held to fp32's by label agreement and the labels' probability KL."""

from __future__ import annotations

from ..build.spec import BuildContext, BuildResult
from . import scoring
from .scoring import bench_summary

KIND = scoring.CLASSIFICATION
NAME = "text-classification"  # the manifest's and runtime.json's "task"
EXAMPLE = 'classify "turn on the kitchen lights"'

__all__ = ["EXAMPLE", "KIND", "NAME", "bench_summary", "run"]


def run(ctx: BuildContext) -> BuildResult:
    """Export, reference, the recipe search and the bundle of a text classifier."""
    return scoring.run(ctx, KIND, list(ctx.texts), None, EXAMPLE)
