"""The stages of a text-generation build: export with KV cache, quantize, next-token evaluation
against the fp32 export, greedy-generation bench, bundle. Called by pipeline.build() for decoders;
the work dir, lock, cache and atomic publish are pipeline.py's."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from . import sources
from .config import Profile
from .errors import GuardError
from .onnx_checks import check_runtime_support
from .pipeline import (
    BuildResult,
    BuildSpec,
    Progress,
    StageRunner,
    _fitting,
    attempts_table,
    choose,
    new_stage_runner,
    run_wheels,
    write_bundle,
)
from .recipes import Attempt
from .runtime.bench import host_info
from .runtime.generator import GenerationConfig
from .sources import EXPORT_TASKS
from .stages import bench_generation, export, next_token, quantize
from .tasks import generation


def _attempt(
    stage: StageRunner,
    profile: Profile,
    spec: BuildSpec,
    work: Path,
    runtime: GenerationConfig,
    texts: list[str],
    texts_digest: str,
    digests: dict[str, str],
) -> Attempt:
    """Quantize with ``profile`` and score it against the fp32 export."""
    fp32_model, tokenizer = work / "export" / "model.onnx", work / "export" / "tokenizer"
    label = profile.name
    config = quantize.QuantizeConfig.from_profile(profile, task_kind="generation")
    quantized = stage(
        "quantize",
        config,
        {"fp32": digests["fp32"]},
        lambda d: quantize.run(config, fp32_model, d),
        label=f"quantize/{label}",
    )
    model = work / f"quantize/{label}" / "model.onnx"
    stage.summary(f"quantize/{label}", f"{profile.method} {quantized['size_bytes'] / 1e6:.1f} MB")
    bar = profile.bar("generation")
    eval_cfg = next_token.EvaluateConfig(
        texts_digest=texts_digest, bar=bar.min, max_kl=bar.max_kl, metric=bar.metric
    )
    scored = stage(
        "evaluate",
        eval_cfg,
        {
            "fp32": digests["fp32"],
            "model": quantized["outputs"]["model.onnx"],
            "runtime": digests["runtime"],
        },  # fmt: skip
        lambda d: next_token.evaluate(
            eval_cfg, fp32_model, model, tokenizer / "tokenizer.json", runtime, texts, d
        ),
        label=f"evaluate/{label}",
    )
    accuracy = {k: v for k, v in scored.items() if k != "outputs"}
    score, size = scored["model"], quantized["size_bytes"]
    budget = spec.target.budgets.generation_model_size_mb
    problem = None
    if score["agreement"] < bar.min:
        problem = f"next-token agreement {score['agreement']} < bar {bar.min}"
    elif bar.max_kl is not None and score["mean_kl"] > bar.max_kl:
        problem = f"mean KL {score['mean_kl']} > max {bar.max_kl}"
    elif budget is not None and size / 1e6 > budget:
        problem = f"{size / 1e6:.1f} MB > budget {budget} MB"
    stage.summary(
        f"evaluate/{label}",
        f"{size / 1e6:.1f} MB, next-token agreement {score['agreement']:.4f}, mean KL "
        f"{score['mean_kl']:.4f} (bar {bar.min}){': ' + problem if problem else ''}",
    )
    return Attempt(profile.name, profile.method, label, model, size, accuracy, [], problem)


def run_generation_stages(
    spec: BuildSpec,
    source: sources.ModelSource,
    texts: list[str],
    name: str,
    work: Path,
    staging: Path,
    report: Progress,
    specs: dict[str, str],
    requirements_txt: str,
) -> BuildResult:
    target = spec.target
    profiles = _fitting(spec, source.task)
    stage = new_stage_runner(spec, work, report)
    wheel_dir, downloaded = run_wheels(spec, stage, work, requirements_txt)

    export_cfg = export.ExportConfig(
        task=EXPORT_TASKS[source.task],
        trust_remote_code=source.trust_remote_code,
        dedupe_tied=True,
        fuse_attention=True,
    )
    exported = stage(
        "export", export_cfg, {"source": source.digest},
        lambda d: export.run(export_cfg, source.path, d),
    )  # fmt: skip
    fp32_model, tokenizer_dir = work / "export" / "model.onnx", work / "export" / "tokenizer"
    tokenizer = tokenizer_dir / "tokenizer.json"
    check_runtime_support(fp32_model, target)
    tied = exported.get("tied", {})
    stage.summary(
        "export",
        f"fp32 ONNX {fp32_model.stat().st_size / 1e6:.1f} MB"
        + (
            f" (tied embeddings stored once: {tied['size_bytes_before'] / 1e6:.1f} MB before)"
            if tied.get("initializers_dropped")
            else ""
        )
        + _graph_summary(exported.get("graph", {})),
    )
    runtime = generation.runtime_config(
        source.path,
        fp32_model,
        target.runtime.intra_op_threads,
        target.runtime.inter_op_threads,
        target.runtime.execution_providers,
    )
    texts_digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    digests = {
        "fp32": exported["outputs"]["model.onnx"],
        "tokenizer": exported["outputs"]["tokenizer/tokenizer.json"],
        "runtime": hashlib.sha256(repr(runtime.to_json()).encode()).hexdigest(),
    }
    ref_cfg = next_token.NextTokenConfig(texts_digest=texts_digest)
    referenced = stage(
        "reference",
        ref_cfg,
        {"source": source.digest, **digests},
        lambda d: next_token.reference(
            ref_cfg, source.path, fp32_model, tokenizer, runtime, texts, d
        ),
    )
    fp32_onnx = referenced["fp32_onnx"]
    stage.summary(
        "reference",
        f"fp32 ONNX vs PyTorch: next-token agreement {fp32_onnx['agreement']:.6f}, max logit "
        f"diff {fp32_onnx['max_abs_logit_diff']:.2e}",
    )

    attempts: list[Attempt] = []
    for profile in profiles:
        attempts.append(_attempt(stage, profile, spec, work, runtime, texts, texts_digest, digests))
        if attempts[-1].passed and not spec.search:
            break
    passing = [a for a in attempts if a.passed]
    if not passing:
        best = max(a.accuracy["model"]["agreement"] for a in attempts)
        raise GuardError(
            f"no recipe met its bar and the target's budgets ({len(attempts)} tried, best "
            f"next-token agreement {best}); see the table above, lower the bar in a profile of "
            "your own, or use --profile fp32",
            details=attempts_table(attempts),
        )

    def measure(attempt: Attempt) -> None:
        bench_cfg = bench_generation.GenerationBenchConfig(
            runs=min(
                spec.bench_runs, bench_generation.GenerationBenchConfig.model_fields["runs"].default
            ),
            threads=target.runtime.intra_op_threads,
            target={"name": target.name, "arch": target.platform.arch},
            host=host_info(),
        )
        inputs = {
            **digests,
            "model": stage.records[f"quantize/{attempt.label}"]["outputs"]["model.onnx"],
        }
        measured = stage(
            "bench",
            bench_cfg,
            inputs,
            lambda d: bench_generation.run(
                bench_cfg, fp32_model, attempt.model, tokenizer, runtime, d
            ),
            label=f"bench/{attempt.label}",
        )
        m = measured["model"]
        stage.summary(
            f"bench/{attempt.label}",
            f"decode {m['decode_tokens_per_s']} tok/s ({measured['decode_speedup_vs_fp32']}x fp32), "
            f"first token {m['time_to_first_token_ms']} ms, peak RSS {m['peak_rss_mb']} MB (host)",
        )
        attempt.bench = {k: v for k, v in measured.items() if k != "outputs"}

    def decode_cost(attempt: Attempt) -> float:  # the fastest decode first
        return -attempt.bench["model"]["decode_tokens_per_s"] if attempt.bench else 0.0

    chosen = choose(spec, passing, measure, cost=decode_cost)
    return write_bundle(
        spec, stage, report, chosen, attempts,
        name=name, staging=staging, source=source, profiles=profiles, runtime=runtime,
        tokenizer_dir=tokenizer_dir, requirements_txt=requirements_txt, specs=specs,
        wheel_dir=wheel_dir, downloaded=downloaded, fp32_onnx=fp32_onnx,
    )  # fmt: skip


def _graph_summary(graph: dict[str, Any]) -> str:
    if graph.get("attention_layers_fused"):
        return (
            f", attention fused in {graph['attention_layers_fused']} layers "
            f"({graph['nodes_before']} -> {graph['nodes_after']} nodes)"
        )
    return f", attention as exported ({graph['skipped']})" if graph.get("skipped") else ""
