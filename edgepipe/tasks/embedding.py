"""Sentence embeddings: export, PyTorch reference, cosine scoring, keep_float ranking, latency encoder_bench."""

from __future__ import annotations

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
from ..engine.spec import BuildContext, BuildResult, TaskSpec
from ..errors import ModelError
from ..graph.checks import check_runtime_support
from ..runtime.embedder import EmbeddingConfig
from ..runtime.tasks import Task
from ..stages import embedding_evaluate, embedding_reference, embedding_sensitivity, encoder_bench, export, quantize
from .texts import builtin_calibration_texts, load_texts

KIND = Task.EMBEDDING
EXAMPLE = 'embed "turn on the kitchen lights"'


@dataclass
class EmbeddingRecipes:
    """What every attempt of one embedding build shares (search.TaskRecipes)."""

    stage: StageRunner
    work: Path
    target: Target
    fp32_model: Path
    reference: Path
    tokenizer: Path
    runtime: EmbeddingConfig
    texts: list[str]
    texts_digest: str
    digests: dict[str, str]
    calibration: quantize.CalibrationData
    bench_runs: int = 30
    score_name: str = field(default="min cosine", init=False)
    kept_as: str = field(default="float", init=False)

    @property
    def calibration_digest(self) -> str:
        return self.calibration.digest

    def quantize(self, profile: Profile, keep: list[str] | None, label: str) -> tuple[Path, dict[str, Any]]:
        return quantize.run_profile(
            self.stage, profile, keep, label, KIND, self.fp32_model, self.digests, self.calibration
        )

    def score(self, profile: Profile, label: str, model: Path, quantized: dict[str, Any]) -> dict[str, Any]:
        eval_cfg = embedding_evaluate.EvaluateConfig(
            bar=profile.bar(KIND).min,
            texts_digest=self.texts_digest,
            runtime=self.runtime.to_json(),
        )
        scored = self.stage(
            "evaluate",
            eval_cfg,
            {"reference": self.digests["reference"], "model": quantized["outputs"]["model.onnx"]},
            lambda d: embedding_evaluate.run(
                eval_cfg, self.reference, model, self.tokenizer, self.runtime, self.texts, d
            ),
            label=f"evaluate/{label}",
        )
        return {k: v for k, v in scored.items() if k != "outputs"}

    def problem(self, profile: Profile, accuracy: dict[str, Any], size_bytes: int) -> str | None:
        if not accuracy["passed"]:
            return f"min cosine {accuracy['model']['min']} < bar {profile.bar(KIND).min}"
        return over_budget(size_bytes, self.target.budgets.model_size_mb)

    def best(self, attempt: Attempt) -> float:
        return float(attempt.accuracy["model"]["min"])

    def evaluated(self, attempt: Attempt, profile: Profile) -> str:
        score = attempt.accuracy["model"]
        return (
            f"{attempt.size_bytes / 1e6:.1f} MB, min cosine {score['min']:.4f} "
            f"(bar {profile.bar(KIND).min}){'' if attempt.passed else ': ' + str(attempt.problem)}"
        )

    def kept_from_start(self, profile: Profile) -> list[str]:
        return []

    def ranking(self, profile: Profile, first: Attempt) -> tuple[list[str], int] | None:
        """The sensitivity stage's MatMuls, most damaging first, for dynamic-int8 with keep_float."""
        q = profile.quantization
        if q is None or q.keep_float is None or profile.method != "dynamic-int8":
            return None
        vectors = np.load(self.work / f"evaluate/{first.label}" / "embeddings.npy")
        ref = np.load(self.reference)
        per_text = np.sum(vectors * ref, axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(ref, axis=1))
        probe = sorted(int(i) for i in np.argsort(per_text, kind="stable")[: q.keep_float.probe_texts])
        config = embedding_sensitivity.SensitivityConfig(
            quantization=q,
            probe=probe,
            texts_digest=self.texts_digest,
            runtime=self.runtime.to_json(),
            calibration_digest=self.calibration_digest,
        )
        self.stage(
            "sensitivity",
            config,
            {"fp32": self.digests["fp32"], "reference": self.digests["reference"]},
            lambda d: embedding_sensitivity.run(
                config,
                self.fp32_model,
                self.reference,
                self.tokenizer,
                self.runtime,
                self.texts,
                self.calibration,
                d,
            ),
            label=f"sensitivity/{profile.name}",
        )
        return self.stage.ranked_nodes(f"sensitivity/{profile.name}"), q.keep_float.max_nodes

    def measure(self, attempt: Attempt) -> dict[str, Any]:
        bench_cfg = encoder_bench.BenchConfig(runs=self.bench_runs, **bench_labels(self.target))
        return self.stage.latency(
            attempt,
            bench_cfg,
            self.digests,
            lambda d: encoder_bench.run(bench_cfg, self.fp32_model, attempt.model, self.tokenizer, self.runtime, d),
        )

    def cost(self, attempt: Attempt) -> float:
        return attempt.p50_ms or float("inf")


def bench_summary(measured: dict[str, Any] | None) -> dict[str, Any]:
    """The build's CI summary fields for an embedding encoder_bench."""
    return {
        "latency_p50_ms": measured["results"][0]["model"]["p50_ms"] if measured else None,
        "speedup_vs_fp32": measured["results"][0]["speedup_vs_fp32"] if measured else None,
    }


def run(ctx: BuildContext) -> BuildResult:
    """Export, reference, the recipe search and the bundle of an embedding model."""
    spec, source, stage, work = ctx.spec, ctx.source, ctx.stage, ctx.work
    target = spec.target
    export_cfg = export.ExportConfig(task=EXPORT_TASKS[source.task_kind], trust_remote_code=source.trust_remote_code)
    exported = stage(
        "export",
        export_cfg,
        {"source": source.digest},
        lambda d: export.run(export_cfg, source.path, d),
    )
    fp32_model, tokenizer_dir = work / "export" / "model.onnx", work / "export" / "tokenizer"
    tokenizer = tokenizer_dir / "tokenizer.json"
    if exported.get("external_data"):
        raise ModelError(
            f"{source.path}: its fp32 export is over 2 GB, which edgepipe builds for text "
            "generation only; embedding models that large are not supported yet"
        )
    check_runtime_support(fp32_model, target)
    stage.summary("export", f"fp32 ONNX {fp32_model.stat().st_size / 1e6:.1f} MB")
    digests = {
        "fp32": exported["outputs"]["model.onnx"],
        "tokenizer": exported["outputs"]["tokenizer/tokenizer.json"],
    }
    pooled = _has_output(fp32_model, "sentence_embedding")
    runtime = EmbeddingConfig(
        max_length=exported["max_length"],
        output="sentence_embedding" if pooled else "last_hidden_state",
        pooling="model" if pooled else "mean",
        intra_op_threads=target.runtime.intra_op_threads,
        inter_op_threads=target.runtime.inter_op_threads,
        providers=tuple(target.runtime.execution_providers),
    )
    ref_cfg = embedding_reference.ReferenceConfig(texts_digest=ctx.texts_digest, runtime=runtime.to_json())
    referenced = stage(
        "reference",
        ref_cfg,
        {"source": source.digest, **digests},
        lambda d: embedding_reference.run(source.path, fp32_model, tokenizer, runtime, ctx.texts, d),
    )
    digests["reference"] = referenced["outputs"]["reference.npy"]
    stage.summary("reference", f"fp32 ONNX vs PyTorch min cosine {referenced['fp32_onnx']['min']:.6f}")
    calibration_texts = load_texts(spec.calibration_data) if spec.calibration_data else builtin_calibration_texts(KIND)
    recipes = EmbeddingRecipes(
        stage=stage,
        work=work,
        target=target,
        fp32_model=fp32_model,
        reference=work / "reference" / "reference.npy",
        tokenizer=tokenizer,
        runtime=runtime,
        texts=ctx.texts,
        texts_digest=ctx.texts_digest,
        digests=digests,
        calibration=quantize.CalibrationData(calibration_texts, tokenizer, runtime.max_length),
        bench_runs=spec.bench_runs,
    )
    search = Search(recipes, stage.summary)
    chosen = search.run(spec, ctx.profiles)
    return write_bundle(
        ctx,
        chosen,
        search.attempts,
        runtime=runtime,
        tokenizer_dir=tokenizer_dir,
        fp32_onnx=referenced["fp32_onnx"],
        bench_fields=bench_summary(chosen.bench),
        example=EXAMPLE,
        selftest=selftest_files(ctx.texts, work / "reference" / "reference.npy"),
    )


def selftest_files(texts: list[str], reference: Path) -> dict[str, bytes]:
    """The evaluation texts and their fp32 reference embeddings, for the device to re-score."""
    return {
        "texts.json": json.dumps(texts, ensure_ascii=False).encode("utf-8"),
        "reference.npy": reference.read_bytes(),
    }


def _has_output(model: Path, name: str) -> bool:
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    return any(o.name == name for o in graph.output)


SPEC = TaskSpec(KIND, run, EXAMPLE)
