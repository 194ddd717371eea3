"""What text classification and reranking share: a sequence-classification head's export, its
fp32 PyTorch logits, the scoring against them, keep_float ranking and the latency encoder_bench."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog.config import Profile, Target
from ..catalog.families import EXPORT_TASKS
from ..engine.publish import write_bundle
from ..engine.runner import StageRunner, bench_labels
from ..engine.search import Attempt, Search, over_budget
from ..engine.spec import BuildContext, BuildResult
from ..graph.checks import check_runtime_support
from ..runtime.scorer import Item, ScoringConfig
from ..runtime.tasks import Task
from ..stages import encoder_bench, export, quantize, scoring
from ..stages.embedding_sensitivity import SensitivityConfig
from .embedding import bench_summary  # the same latency bench as an embedding model's
from .texts import builtin_calibration_texts, load_texts

CLASSIFICATION, RERANKING = Task.CLASSIFICATION, Task.RERANKING


@dataclass
class ScoringRecipes:
    """What every attempt of one classifier or reranker build shares (search.TaskRecipes)."""

    kind: Task  # CLASSIFICATION or RERANKING
    stage: StageRunner
    work: Path
    target: Target
    fp32_model: Path
    reference: Path
    tokenizer: Path
    runtime: ScoringConfig
    items: list[Item]
    queries: list[int] | None  # reranking: each pair's query number
    items_digest: str
    digests: dict[str, str]
    calibration: quantize.CalibrationData
    bench_runs: int = 30
    kept_as: str = field(default="float", init=False)
    score_name: str = field(default="", init=False)
    head: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.head = scoring.head_nodes(self.fp32_model)
        self.score_name = "label agreement" if self.kind == CLASSIFICATION else "worst-query Spearman"

    def quantize(self, profile: Profile, keep: list[str] | None, label: str) -> tuple[Path, dict[str, Any]]:
        """The profile's model, with the classification head always float (scoring.head_nodes)
        besides the ``keep`` nodes."""
        return quantize.run_profile(
            self.stage,
            profile,
            [*self.head, *(keep or [])],
            label,
            self.kind,
            self.fp32_model,
            self.digests,
            self.calibration,
        )

    def score(self, profile: Profile, label: str, model: Path, quantized: dict[str, Any]) -> dict[str, Any]:
        bar = profile.bar(self.kind)
        config = scoring.EvaluateConfig(
            metric=bar.metric,
            bar=bar.min,
            max_kl=bar.max_kl,
            max_score_error=bar.max_score_error,
            items_digest=self.items_digest,
            runtime=self.runtime.to_json(),
        )
        scored = self.stage(
            "evaluate",
            config,
            {"reference": self.digests["reference"], "model": quantized["outputs"]["model.onnx"]},
            lambda d: scoring.run_evaluate(
                config,
                self.reference,
                model,
                self.tokenizer,
                self.runtime,
                self.items,
                self.queries,
                d,
            ),
            label=f"evaluate/{label}",
        )
        return {k: v for k, v in scored.items() if k != "outputs"}

    def _missed(self, profile: Profile, accuracy: dict[str, Any]) -> str:
        bar, got = profile.bar(self.kind), accuracy["model"]
        if self.kind == CLASSIFICATION:
            if got["agreement"] < bar.min:
                return f"label agreement {got['agreement']} < bar {bar.min}"
            return f"mean KL {got['mean_kl']} > {bar.max_kl}"
        if got["min_spearman"] < bar.min:
            return f"worst-query Spearman {got['min_spearman']} < bar {bar.min}"
        return f"max score error {got['max_score_error']} > {bar.max_score_error}"

    def problem(self, profile: Profile, accuracy: dict[str, Any], size_bytes: int) -> str | None:
        if not accuracy["passed"]:
            return self._missed(profile, accuracy)
        return over_budget(size_bytes, self.target.budgets.model_size_mb)

    def best(self, attempt: Attempt) -> float:
        got = attempt.accuracy["model"]
        return float(got["agreement"] if self.kind == CLASSIFICATION else got["min_spearman"])

    def evaluated(self, attempt: Attempt, profile: Profile) -> str:
        got, bar = attempt.accuracy["model"], profile.bar(self.kind)
        if self.kind == CLASSIFICATION:
            score = f"label agreement {got['agreement']:.4f}, mean KL {got['mean_kl']:.5f}"
        else:
            score = f"worst-query Spearman {got['min_spearman']:.4f}, max score error {got['max_score_error']:.4f}"
        problem = "" if attempt.passed else ": " + str(attempt.problem)
        return f"{attempt.size_bytes / 1e6:.1f} MB, {score} (bar {bar.min}){problem}"

    def kept_from_start(self, profile: Profile) -> list[str]:
        return []

    def ranking(self, profile: Profile, first: Attempt) -> tuple[list[str], int] | None:
        """The weight MatMuls, most damaging first, for dynamic-int8 with keep_float: each one
        quantized alone, scored on the items the first attempt did worst on."""
        q = profile.quantization
        if q is None or q.keep_float is None or profile.method != "dynamic-int8":
            return None
        got = np.load(self.work / f"evaluate/{first.label}" / "logits.npy")
        probe = scoring.worst_items(np.load(self.reference), got, self.queries is None)
        config = SensitivityConfig(
            quantization=q,
            probe=probe[: q.keep_float.probe_texts],
            texts_digest=self.items_digest,
            runtime=self.runtime.to_json(),
            calibration_digest=self.calibration.digest,
        )
        self.stage(
            "sensitivity",
            config,
            {"fp32": self.digests["fp32"], "reference": self.digests["reference"]},
            lambda d: scoring.run_sensitivity(
                config,
                self.fp32_model,
                self.reference,
                self.tokenizer,
                self.runtime,
                self.items,
                self.queries is None,
                self.calibration,
                d,
            ),
            label=f"sensitivity/{profile.name}",
        )
        return self.stage.ranked_nodes(f"sensitivity/{profile.name}"), q.keep_float.max_nodes

    def measure(self, attempt: Attempt) -> dict[str, Any]:
        config = encoder_bench.BenchConfig(runs=self.bench_runs, **bench_labels(self.target))
        return self.stage.latency(
            attempt,
            config,
            self.digests,
            lambda d: encoder_bench.run(
                config,
                self.fp32_model,
                attempt.model,
                self.tokenizer,
                self.runtime.session_settings(),
                d,
                task=self.runtime_task,
            ),
        )

    @property
    def runtime_task(self) -> str:
        return self.kind.manifest_name

    def cost(self, attempt: Attempt) -> float:
        return attempt.p50_ms or float("inf")


def labels(model_dir: Path, kind: str) -> tuple[str, ...]:
    """config.json's id2label in id order; a reranker's one output is its "score"."""
    if kind == RERANKING:
        return ("score",)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    ids = sorted(int(i) for i in id2label)
    if ids != list(range(len(ids))):
        return tuple(f"LABEL_{i}" for i in range(int(config.get("num_labels", 2))))
    return tuple(str(id2label[str(i)]) for i in ids)


def digest(items: list[Item], queries: list[int] | None) -> str:
    return hashlib.sha256(json.dumps([items, queries], ensure_ascii=False).encode()).hexdigest()


def run(ctx: BuildContext, kind: Task, items: list[Item], queries: list[int] | None, example: str) -> BuildResult:
    """Export, reference, the recipe search and the bundle of a classifier or reranker."""
    spec, source, stage, work = ctx.spec, ctx.source, ctx.stage, ctx.work
    export_cfg = export.ExportConfig(task=EXPORT_TASKS[source.task_kind], trust_remote_code=source.trust_remote_code)
    exported = stage(
        "export",
        export_cfg,
        {"source": source.digest},
        lambda d: export.run(export_cfg, source.path, d),
    )
    fp32_model, tokenizer_dir = work / "export" / "model.onnx", work / "export" / "tokenizer"
    tokenizer = tokenizer_dir / "tokenizer.json"
    check_runtime_support(fp32_model, spec.target)
    stage.summary("export", f"fp32 ONNX {fp32_model.stat().st_size / 1e6:.1f} MB")
    digests = {
        "fp32": exported["outputs"]["model.onnx"],
        "tokenizer": exported["outputs"]["tokenizer/tokenizer.json"],
    }
    runtime = ScoringConfig(
        max_length=exported["max_length"],
        labels=labels(source.path, kind),
        pairs=kind == RERANKING,
        intra_op_threads=spec.target.runtime.intra_op_threads,
        inter_op_threads=spec.target.runtime.inter_op_threads,
        providers=tuple(spec.target.runtime.execution_providers),
    )
    items_digest = digest(items, queries)
    ref_cfg = scoring.ReferenceConfig(items_digest=items_digest, runtime=runtime.to_json())
    referenced = stage(
        "reference",
        ref_cfg,
        {"source": source.digest, **digests},
        lambda d: scoring.run_reference(source.path, fp32_model, tokenizer, runtime, items, queries, d),
    )
    digests["reference"] = referenced["outputs"]["reference.npy"]
    fp32 = referenced["fp32_onnx"]
    stage.summary("reference", f"fp32 ONNX vs PyTorch: largest logit difference {fp32['max_abs_logit_diff']}")
    calibration_texts = load_texts(spec.calibration_data) if spec.calibration_data else builtin_calibration_texts(kind)
    recipes = ScoringRecipes(
        kind=kind,
        stage=stage,
        work=work,
        target=spec.target,
        fp32_model=fp32_model,
        reference=work / "reference" / "reference.npy",
        tokenizer=tokenizer,
        runtime=runtime,
        items=items,
        queries=queries,
        items_digest=items_digest,
        digests=digests,
        calibration=quantize.CalibrationData(calibration_texts, tokenizer, runtime.max_length),
        bench_runs=spec.bench_runs,
    )
    search = Search(recipes, stage.summary)
    chosen = search.run(spec, ctx.profiles)
    selftest = {
        "items.json": json.dumps({"items": items, "queries": queries}, ensure_ascii=False).encode(),
        "reference.npy": (work / "reference" / "reference.npy").read_bytes(),
    }
    return write_bundle(
        ctx,
        chosen,
        search.attempts,
        runtime=runtime,
        tokenizer_dir=tokenizer_dir,
        fp32_onnx=fp32,
        bench_fields=bench_summary(chosen.bench),
        example=example,
        selftest=selftest,
    )
