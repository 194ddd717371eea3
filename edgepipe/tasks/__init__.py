"""The task registry: one module per task kind saying what differs for it (export, reference,
scoring, bench, runtime config). A kind is added by its module and one line in TASKS."""

from __future__ import annotations

from ..engine.spec import TaskSpec
from ..runtime.tasks import Task
from . import classification, embedding, generation, reranking

# task kind -> what its module provides (engine.spec.TaskSpec: the kind, run(ctx) -> BuildResult,
# the runtime entry's example command).
TASKS: dict[Task, TaskSpec] = {
    spec.kind: spec for spec in (embedding.SPEC, generation.SPEC, classification.SPEC, reranking.SPEC)
}
