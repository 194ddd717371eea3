"""``edgepipe build``: a model into a verified bundle for one target."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .. import catalog
from ..progress import reporting
from ..runtime.tasks import Task
from . import common, progress_view, tables
from .common import (
    dirs_option,
    err,
    handle_errors,
    signing_key,
    signing_options,
)


@click.command()
@click.option("--target", "-t", required=True, help="Device name (see `edgepipe targets`) or YAML file.")
@click.option("--profile", "-p", help="Recipe name or YAML file; default: the target's.")
@click.option(
    "--model",
    "-m",
    help="Hugging Face model directory, llama.cpp .gguf file, or hub id org/name[@revision] (from "
    "the Hugging Face cache); default: all-MiniLM-L6-v2.",
)
@click.option(
    "--adapter",
    metavar="ADAPTER",
    help="PEFT LoRA adapter directory or hub id, merged into --model in float32 before the build (docs/fine-tuned.md).",
)
@click.option(
    "--task",
    type=click.Choice([t.manifest_name for t in Task]),
    callback=lambda ctx, param, value: None if value is None else Task.parse(value),
    help="Build the model for this task; default: what its config.json says (a "
    "*ForSequenceClassification head: text-classification, or reranking with one output).",
)
@click.option("--name", help="Model name in the bundle's name; default: the directory's name.")
@click.option("--out", "-o", default="dist", type=click.Path(path_type=Path), show_default=True)
@click.option("--work-dir", type=click.Path(path_type=Path), help="Keep stage files here.")
@click.option("--eval-data", type=click.Path(path_type=Path), help="Texts (lines or JSONL).")
@click.option(
    "--calibration-data",
    type=click.Path(path_type=Path),
    help="Texts for calibrating activation ranges (lines or JSONL); default: a built-in set.",
)
@click.option(
    "--search",
    is_flag=True,
    help="Try every profile that fits the target; keep the fastest that meets its bar and budgets.",
)
@click.option("--bench-runs", default=30, show_default=True, type=click.IntRange(1))
@click.option(
    "--bench/--no-bench",
    "run_bench",
    default=True,
    show_default=True,
    help="Time the model on this host; --no-bench makes from-scratch rebuilds byte-identical.",
)
@click.option("--allow-pickle", is_flag=True, help="Load pytorch_model.bin (runs code in it).")
@click.option("--trust-remote-code", is_flag=True, help="Run a model's own Python code.")
@click.option("--download", is_flag=True, help="Fetch a hub id into the HF cache first (docs: Models and sources).")
@click.option(
    "--cache/--no-cache",
    default=True,
    show_default=True,
    help="Reuse stage results from the cache (EDGEPIPE_CACHE_DIR, default ~/.cache/edgepipe).",
)
@click.option(
    "--with-wheels",
    is_flag=True,
    help="Put the requirements' wheels for the target's platform into the bundle's wheels/.",
)
@click.option(
    "--runtime-version",
    metavar="VERSION",
    help="Pin this onnxruntime (within the target's range) instead of the build's own.",
)
@click.option(
    "--license-policy",
    "license_policy",
    type=click.Path(path_type=Path),
    help="YAML with allow/deny/require_acceptance licence ids; refuses a model outside it (exit 10).",
)
@click.option(
    "--accept-license",
    "accept_licenses",
    multiple=True,
    metavar="ID",
    help="Accept this licence (SPDX, LicenseRef or Hugging Face id) for the policy (repeatable).",
)
@signing_options("--sign-")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@dirs_option("targets")
@dirs_option("profiles")
@handle_errors
def build(
    target: str,
    profile: str | None,
    model: str | None,
    adapter: str | None,
    task: Task | None,
    name: str | None,
    out: Path,
    work_dir: Path | None,
    eval_data: Path | None,
    calibration_data: Path | None,
    search: bool,
    bench_runs: int,
    run_bench: bool,
    allow_pickle: bool,
    trust_remote_code: bool,
    download: bool,
    cache: bool,
    with_wheels: bool,
    runtime_version: str | None,
    license_policy: Path | None,
    accept_licenses: tuple[str, ...],
    sign_key: Path | None,
    sign_certificate: Path | None,
    sign_certificate_chain: tuple[Path, ...],
    as_json: bool,
    targets_dirs: tuple[Path, ...],
    profiles_dirs: tuple[Path, ...],
) -> None:
    """Build a verified bundle of MODEL for TARGET."""
    from rich.markup import escape

    from ..cache import StageCache, default_dir
    from ..engine.licences import load_policy
    from ..engine.spec import choose_profiles
    from ..pipeline import BuildSpec
    from ..pipeline import build as run_build
    from ..sources import download as fetch
    from ..sources.gguf import requantize_warning
    from ..sources.hub import is_true

    target_cfg = catalog.targets(targets_dirs).load(target)
    if download:  # a hub id into the Hugging Face cache, where the build then reads it offline
        commit = fetch(model, is_true(common.USER_HUB_OFFLINE), allow_pickle, trust_remote_code)
        if commit:
            err.print(f"{model}: snapshot {commit} in the Hugging Face cache")
        adapter_commit = fetch(adapter, is_true(common.USER_HUB_OFFLINE)) if adapter else None
        if adapter_commit:
            err.print(f"{adapter}: snapshot {adapter_commit} in the Hugging Face cache")
    profile_cfg, candidates = choose_profiles(
        target_cfg,
        catalog.profiles(profiles_dirs),
        model,
        profile,
        search,
        allow_pickle,
        trust_remote_code,
        task,
        adapter,
    )
    spec = BuildSpec(
        target=target_cfg,
        profile=profile_cfg,
        out=out,
        model=model,
        name=name,
        work_dir=work_dir,
        eval_data=eval_data,
        calibration_data=calibration_data,
        search=search,
        candidates=candidates,
        bench_runs=bench_runs,
        bench=run_bench,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
        cache=StageCache(default_dir()) if cache else None,
        with_wheels=with_wheels,
        runtime_version=runtime_version,
        sign_with=signing_key(sign_key, sign_certificate, sign_certificate_chain, "--sign-"),
        task=task,
        licence_policy=load_policy(license_policy) if license_policy else None,
        licence_policy_source=str(license_policy) if license_policy else None,
        accept_licences=accept_licenses,
        adapter=adapter,
    )
    started: dict[str, float] = {}

    def progress(stage: str, summary: str | None) -> None:
        if summary is None:
            started[stage] = time.perf_counter()
            if err.is_terminal:
                err.print(f"[dim]… {stage}[/dim]", end="\r")
        else:
            seconds = time.perf_counter() - started.get(stage, time.perf_counter())
            err.print(f"[green]✓[/green] {stage:<9} {summary} [dim]({seconds:.1f}s)[/dim]")

    err.print(f"building for [bold]{target_cfg.name}[/bold] with profile [bold]{profile_cfg.name}[/bold]")
    warning = requantize_warning(model) if model else None
    if warning:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    with reporting(progress_view.reporter()):  # the long loops inside stages: bars or log lines
        result = run_build(spec, progress)
    kept = result.manifest["profile"]["name"]
    if search or len(result.attempts) > 1:
        err.print(tables.rows_table(result.attempts, f"recipes tried; kept {kept}"))
    if as_json:
        click.echo(json.dumps(result.summary(), ensure_ascii=False))
    else:
        err.print(f"[bold]bundle:[/bold] {result.bundle_dir}")
        err.print(f"[bold]archive:[/bold] {result.archive}")
        err.print(f"run it: python {result.bundle_dir} {result.example}")
