"""Text generation: the runtime config a decoder's bundle carries, read from the model at build
time; the export with KV cache, next-token scoring against the fp32 export and the decode bench."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..catalog.config import Profile, Target
from ..catalog.families import EXPORT_TASKS
from ..engine.publish import write_bundle
from ..engine.runner import StageRunner, bench_labels
from ..engine.search import Attempt, Search, over_budget
from ..engine.spec import BuildContext, BuildResult, TaskSpec
from ..graph import external
from ..graph.checks import check_runtime_support
from ..runtime.generator import GenerationConfig
from ..runtime.tasks import Task
from ..stages import export, generation_bench, generation_reference, generation_sensitivity, quantize
from .decoder_runtime import runtime_config
from .texts import builtin_calibration_texts, load_texts

log = logging.getLogger(__name__)
KIND = Task.GENERATION
EXAMPLE = 'generate "Once upon a time"'
# Tokens per calibration text at most (GPTQ's statistics; the sensitivity probe takes fewer).
CALIBRATION_TOKENS = 256


@dataclass
class GenerationRecipes:
    """What every attempt of one decoder build shares (search.TaskRecipes)."""

    stage: StageRunner
    work: Path
    target: Target
    runtime: GenerationConfig
    texts: list[str]
    texts_digest: str
    digests: dict[str, str]
    calibration: quantize.CalibrationData
    bench_runs: int = 30
    score_name: str = field(default="next-token agreement", init=False)
    kept_as: str = field(default="8bit", init=False)

    @property
    def calibration_digest(self) -> str:
        return self.calibration.digest

    def quantize(self, profile: Profile, keep: list[str] | None, label: str) -> tuple[Path, dict[str, Any]]:
        return quantize.run_profile(
            self.stage,
            profile,
            keep,
            label,
            KIND,
            self.work / "export" / "model.onnx",
            self.digests,
            self.calibration,
        )

    def score(self, profile: Profile, label: str, model: Path, quantized: dict[str, Any]) -> dict[str, Any]:
        bar = profile.bar(KIND)
        eval_cfg = generation_reference.NextTokenEvaluateConfig(
            texts_digest=self.texts_digest,
            bar=bar.min,
            max_kl=bar.max_kl,
            metric=bar.metric,
            max_perplexity_ratio=bar.max_perplexity_ratio,
        )
        tokenizer = self.work / "export" / "tokenizer" / "tokenizer.json"
        scored = self.stage(
            "evaluate",
            eval_cfg,
            {
                "fp32": self.digests["fp32"],
                "model": external.digest(quantized["outputs"], "model.onnx"),
                "runtime": self.digests["runtime"],
                "chat": self.digests["chat"],
            },
            lambda d: generation_reference.evaluate(
                eval_cfg,
                self.work / "export" / "model.onnx",
                model,
                tokenizer,
                self.runtime,
                self.texts,
                self.work / "reference" / "chat.json",
                d,
            ),
            label=f"evaluate/{label}",
        )
        return {k: v for k, v in scored.items() if k != "outputs"}

    def problem(self, profile: Profile, accuracy: dict[str, Any], size_bytes: int) -> str | None:
        score, bar = accuracy["model"], profile.bar(KIND)
        missed = generation_reference.problem(score, bar.min, bar.max_kl, bar.max_perplexity_ratio)
        return missed or over_budget(size_bytes, self.target.budgets.generation_model_size_mb)

    def best(self, attempt: Attempt) -> float:
        return float(attempt.accuracy["model"]["agreement"])

    def evaluated(self, attempt: Attempt, profile: Profile) -> str:
        score, problem = attempt.accuracy["model"], attempt.problem
        ratio = score.get("perplexity_ratio")
        return (
            f"{attempt.size_bytes / 1e6:.1f} MB, next-token agreement {score['agreement']:.4f}, "
            f"mean KL {score['mean_kl']:.4f}"
            + (f", perplexity {ratio:.3f}x fp32" if ratio is not None else "")
            + f" (bar {profile.bar(KIND).min})"
            + (f": {problem}" if problem else "")
        )

    def kept_from_start(self, profile: Profile) -> list[str]:
        """int4 with keep_8bit.extra_size: the MatMuls worth most per byte, within that share."""
        w = profile.weight_only
        if profile.method != "int4" or w is None or w.keep_8bit is None:
            return []
        if w.keep_8bit.extra_size is None:
            return []
        record, ranked = self._rank(profile)
        kept = generation_sensitivity.within(ranked, record["int4_bytes"], w.keep_8bit.extra_size)
        return kept[: w.keep_8bit.max_nodes]

    def ranking(self, profile: Profile, first: Attempt) -> tuple[list[str], int] | None:
        """int4 with keep_8bit: the MatMuls worth 8 bits, most accuracy per byte first."""
        w = profile.weight_only
        if profile.method != "int4" or w is None or w.keep_8bit is None:
            return None
        _, ranked = self._rank(profile)
        return [r["node"] for r in ranked], w.keep_8bit.max_nodes

    def _rank(self, profile: Profile) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The sensitivity stage's record for an int4 profile, and its ranking.json."""
        w = profile.weight_only
        assert w is not None and w.keep_8bit is not None
        config = generation_sensitivity.DecoderSensitivityConfig(
            weight_only=w.model_copy(update={"int8_nodes": [], "keep_8bit": None}),
            calibration_digest=self.calibration_digest,
            probe_texts=w.keep_8bit.probe_texts,
        )
        label = f"sensitivity/{profile.name}"
        ranking = self.work / label / "ranking.json"
        if label in self.stage.records:
            return self.stage.records[label], json.loads(ranking.read_text())
        record = self.stage(
            "sensitivity",
            config,
            {"fp32": self.digests["fp32"], "tokenizer": self.digests["tokenizer"]},
            lambda d: generation_sensitivity.run(config, self.work / "export" / "model.onnx", self.calibration, d),
            label=label,
        )
        worst = record["worst"][0]["node"] if record["worst"] else "none"
        self.stage.summary(label, f"{record['nodes']} MatMuls ranked, most worth 8 bits: {worst}")
        return record, json.loads(ranking.read_text())

    def measure(self, attempt: Attempt) -> dict[str, Any]:
        config = generation_bench.GenerationBenchConfig
        bench_cfg = config(
            runs=min(self.bench_runs, config.model_fields["runs"].default),
            **bench_labels(self.target),
        )
        export = self.work / "export"
        fp32_model, tokenizer = export / "model.onnx", export / "tokenizer" / "tokenizer.json"
        measured = self.stage.bench(
            attempt.label,
            bench_cfg,
            self.digests,
            lambda d: generation_bench.run(bench_cfg, fp32_model, attempt.model, tokenizer, self.runtime, d),
        )
        m = measured["model"]
        self.stage.summary(
            f"bench/{attempt.label}",
            f"decode {m['decode_tokens_per_s']} tok/s ({measured['decode_speedup_vs_fp32']}x fp32), "
            f"first token {m['time_to_first_token_ms']} ms, peak RSS {m['peak_rss_mb']} MB (host)",
        )
        attempt.bench = {k: v for k, v in measured.items() if k != "outputs"}
        return attempt.bench

    def cost(self, attempt: Attempt) -> float:  # the fastest decode first
        return -attempt.bench["model"]["decode_tokens_per_s"] if attempt.bench else 0.0


def bench_summary(measured: dict[str, Any] | None) -> dict[str, Any]:
    """The build's CI summary fields for a decoder's bench."""
    keys = ("time_to_first_token_ms", "prefill_tokens_per_s", "decode_tokens_per_s")
    return {
        "latency_p50_ms": None,
        "speedup_vs_fp32": None,
        **{k: measured["model"][k] if measured else None for k in keys},
    }


def run(ctx: BuildContext) -> BuildResult:
    """Export with KV cache, next-token reference, the recipe search and the bundle of a decoder."""
    spec, source, stage, work = ctx.spec, ctx.source, ctx.stage, ctx.work
    target = spec.target
    export_cfg = export.ExportConfig(
        task=EXPORT_TASKS[source.task_kind],
        trust_remote_code=source.trust_remote_code,
        dedupe_tied=True,
        fuse_attention=True,
    )
    exported = stage(
        "export",
        export_cfg,
        {"source": source.digest},
        lambda d: export.run(export_cfg, source.path, d),
    )
    fp32_model, tokenizer_dir = work / "export" / "model.onnx", work / "export" / "tokenizer"
    tokenizer = tokenizer_dir / "tokenizer.json"
    check_runtime_support(fp32_model, target)
    tied = exported.get("tied", {})
    stage.summary(
        "export",
        f"fp32 ONNX {external.size(fp32_model) / 1e6:.1f} MB"
        + (" (external data)" if exported.get("external_data") else "")
        + (
            f" (tied embeddings stored once: {tied['size_bytes_before'] / 1e6:.1f} MB before)"
            if tied.get("initializers_dropped")
            else ""
        )
        + _graph_summary(exported.get("graph", {})),
    )
    runtime = runtime_config(
        source.path,
        fp32_model,
        target.runtime.intra_op_threads,
        target.runtime.inter_op_threads,
        target.runtime.execution_providers,
        ram_mb=target.budgets.ram_mb,
    )
    digests = {
        "fp32": external.digest(exported["outputs"], "model.onnx"),
        "tokenizer": exported["outputs"]["tokenizer/tokenizer.json"],
        "runtime": hashlib.sha256(repr(runtime.to_json()).encode()).hexdigest(),
    }
    ref_cfg = generation_reference.NextTokenConfig(texts_digest=ctx.texts_digest)
    referenced = stage(
        "reference",
        ref_cfg,
        {"source": source.digest, **digests},
        lambda d: generation_reference.reference(ref_cfg, source.path, fp32_model, tokenizer, runtime, ctx.texts, d),
    )
    fp32_onnx = referenced["fp32_onnx"]
    digests["chat"] = referenced["outputs"]["chat.json"]
    stage.summary(
        "reference",
        f"fp32 ONNX vs PyTorch: next-token agreement {fp32_onnx['agreement']:.6f}, max logit "
        f"diff {fp32_onnx['max_abs_logit_diff']:.2e}",
    )
    calibration = quantize.CalibrationData(
        load_texts(spec.calibration_data) if spec.calibration_data else builtin_calibration_texts(KIND),
        tokenizer,
        CALIBRATION_TOKENS,
    )
    recipes = GenerationRecipes(
        stage,
        work,
        target,
        runtime,
        ctx.texts,
        ctx.texts_digest,
        digests,
        calibration,
        spec.bench_runs,
    )
    search = Search(recipes, stage.summary)
    chosen = search.run(spec, ctx.profiles)
    return write_bundle(
        ctx,
        chosen,
        search.attempts,
        runtime=runtime,
        tokenizer_dir=tokenizer_dir,
        fp32_onnx=fp32_onnx,
        bench_fields=bench_summary(chosen.bench),
        example=EXAMPLE,
        selftest=selftest_files(
            generation_reference.token_ids(tokenizer, ctx.texts, ref_cfg.max_tokens),
            work / "reference" / "next_tokens.npy",
        ),
    )


def selftest_files(ids: list[list[int]], next_tokens: Path) -> dict[str, bytes]:
    """The evaluation texts' ids and the fp32 ONNX model's next token at each position (the
    reference stage's), for the device to re-score its own model's agreement."""
    return {
        "ids.json": json.dumps(ids).encode("utf-8"),
        "next_tokens.npy": next_tokens.read_bytes(),
    }


def _graph_summary(graph: dict[str, Any]) -> str:
    if graph.get("attention_layers_fused"):
        return (
            f", attention fused in {graph['attention_layers_fused']} layers "
            f"({graph['nodes_before']} -> {graph['nodes_after']} nodes)"
        )
    return f", attention as exported ({graph['skipped']})" if graph.get("skipped") else ""


SPEC = TaskSpec(KIND, run, EXAMPLE)
