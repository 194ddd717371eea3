"""Command line (with cli_common.py and cli_trust.py): parse, call the library, render; the only
place that prints or exits."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from . import __version__, catalog, device_cli, tables
from .cli_cache import cache
from .cli_catalog import matrix, models, profiles, targets
from .cli_common import (
    dirs_option,
    err,
    handle_errors,
    out,
    path_option,
    signing_key,
    signing_options,
)
from .cli_trust import keygen, sbom_command, sign

# Offline by design: nothing is fetched from a model hub unless `build --download` asks, and the
# user's own HF_HUB_OFFLINE=1 (kept before the default hides it) forbids even that.
_USER_HUB_OFFLINE = os.environ.get("HF_HUB_OFFLINE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepipe")
def main() -> None:
    """Export, quantize, verify, benchmark and bundle a model for one edge device."""


for command in (keygen, sign, sbom_command, targets, profiles, models, matrix):
    main.add_command(command)


@main.command()
@click.option(
    "--target", "-t", required=True, help="Device name (see `edgepipe targets`) or YAML file."
)
@click.option("--profile", "-p", help="Recipe name or YAML file; default: the target's.")
@click.option(
    "--model",
    "-m",
    help="Hugging Face model directory, llama.cpp .gguf file, or hub id org/name[@revision] (from "
    "the Hugging Face cache); default: all-MiniLM-L6-v2.",
)
@click.option(
    "--task",
    type=click.Choice(["embedding", "text-generation", "text-classification", "reranking"]),
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
@click.option("--download", is_flag=True, help="Fetch a hub id into the HF cache first (README).")
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
@signing_options("--sign-")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@dirs_option("targets")
@dirs_option("profiles")
@handle_errors
def build(
    target: str,
    profile: str | None,
    model: str | None,
    task: str | None,
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
    sign_key: Path | None,
    sign_certificate: Path | None,
    sign_certificate_chain: tuple[Path, ...],
    as_json: bool,
    targets_dirs: tuple[Path, ...],
    profiles_dirs: tuple[Path, ...],
) -> None:
    """Build a verified bundle of MODEL for TARGET."""
    from rich.markup import escape

    from .build.spec import choose_profiles
    from .cache import StageCache, default_dir
    from .gguf_source import requantize_warning
    from .hub import is_true
    from .pipeline import BuildSpec
    from .pipeline import build as run_build
    from .sources import download as fetch

    target_cfg = catalog.targets(targets_dirs).load(target)
    if download:  # a hub id into the Hugging Face cache, where the build then reads it offline
        commit = fetch(model, is_true(_USER_HUB_OFFLINE), allow_pickle, trust_remote_code)
        if commit:
            err.print(f"{model}: snapshot {commit} in the Hugging Face cache")
    profile_cfg, candidates = choose_profiles(
        target_cfg, catalog.profiles(profiles_dirs), model, profile, search, allow_pickle,
        trust_remote_code, task,
    )  # fmt: skip
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

    err.print(
        f"building for [bold]{target_cfg.name}[/bold] with profile [bold]{profile_cfg.name}[/bold]"
    )
    warning = requantize_warning(model) if model else None
    if warning:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}")
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


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@path_option(
    "--public-key", "Check the bundle's signature (model.sig) with this PEM EC public key."
)
@path_option(
    "--certificate-chain",
    "Or check a certificate-signed bundle against these trusted certificates (repeatable).",
    multiple=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def verify(
    path: Path, public_key: Path | None, certificate_chain: tuple[Path, ...], as_json: bool
) -> None:
    """Check a bundle directory or .tar.gz against its signature (with a key) and manifest."""
    from .verify import verify as run_verify

    if public_key and certificate_chain:
        raise click.UsageError("--public-key or --certificate-chain, not both")
    count, signed = run_verify(path, public_key, certificate_chain)
    checked = public_key is not None or bool(certificate_chain)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "path": str(path),
                    "ok": True,
                    "files": count,
                    "signed": signed,
                    "signature_checked": checked,
                }
            )
        )
        return
    if checked:
        trusted = public_key or ", ".join(map(str, certificate_chain))
        said = f"; signature checked with {trusted}"
    else:
        said = "; signed (model.sig; pass --public-key to check it)" if signed else "; not signed"
    err.print(f"[green]ok:[/green] {path}: {count} files match manifest.json{said}")


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    from .runtime.measure import ShapeError, parse_sizes

    try:
        return None if value is None else parse_sizes(value, f"--{param.name}".replace("_", "-"))
    except ShapeError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command("bench")
@click.argument(
    "bundle_dir", metavar="BUNDLE", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--batch-sizes", default="1", show_default=True, callback=_sizes, help="Comma-separated."
)
@click.option(
    "--seq-lens",
    callback=_sizes,
    help="Comma-separated tokens; default 128 or the model's maximum.",
)
@click.option(
    "--runs", default=30, show_default=True, type=click.IntRange(1), help="Timed runs per shape."
)
@click.option(
    "--warmup", default=5, show_default=True, type=click.IntRange(0), help="Untimed runs first."
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="Intra-op threads; default: the target's, capped at the cores here.",
)
@click.option(
    "--max-seconds",
    type=click.FloatRange(0, min_open=True),
    help="Time limit for all shapes together.",
)
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Time the fp32 export beside it.",
)
@click.option(
    "--baseline-model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The fp32 ONNX file; default: the export in the stage cache.",
)
@click.option(
    "--write/--no-write", default=True, show_default=True, help="Record the results in the bundle."
)
@click.option("--json", "as_json", is_flag=True, help="Print the edgepipe.bench/1 JSON on stdout.")
@handle_errors
def bench(
    bundle_dir: Path,
    batch_sizes: tuple[int, ...],
    seq_lens: tuple[int, ...] | None,
    runs: int,
    warmup: int,
    threads: int | None,
    max_seconds: float | None,
    baseline: bool,
    baseline_model: Path | None,
    write: bool,
    as_json: bool,
) -> None:
    """Measure BUNDLE's latency here, beside the fp32 model, and record it in the bundle."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from .bench import host, report
    from .build.publish import record_bench
    from .runtime import generation_bench
    from .runtime.measure import BenchSettings, incomplete_message
    from .runtime.signature import is_signed
    from .stages.bundle import DOCUMENTS

    if baseline_model and not baseline:
        raise click.UsageError("--baseline-model and --no-baseline contradict each other")
    shown = None
    if baseline and baseline_model is None:
        baseline_model, shown, warning = host.default_baseline(bundle_dir)
        if warning:
            err.print(warning)
    settings = BenchSettings(batch_sizes, seq_lens, runs, warmup, threads, max_seconds)
    with Progress(
        "bench", BarColumn(), MofNCompleteColumn(), "runs", TimeRemainingColumn(),
        console=err, transient=True, disable=not err.is_terminal,
    ) as bar:  # fmt: skip
        task = bar.add_task("bench", total=None)
        result = host.run(
            bundle_dir,
            settings,
            baseline_model,
            lambda done, total: bar.update(task, completed=done, total=total),
            baseline_shown=shown,
        )
    message = incomplete_message(result)
    if message:
        err.print(f"[yellow]warning:[/yellow] {message}")
    if write:
        signed = is_signed(bundle_dir)
        archived = record_bench(bundle_dir, result)
        written = ", ".join(DOCUMENTS) + (f", {bundle_dir.name}.tar.gz" if archived else "")
        err.print(f"recorded in {bundle_dir}: {written}")
        if signed:
            err.print(
                "[yellow]warning:[/yellow] the signature signed the old manifest and was removed: "
                f"edgepipe sign {bundle_dir} --key private.pem"
            )
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    if result["schema"] == generation_bench.SCHEMA:  # a text-generation bundle's
        out.print(f"Generation {report.where(result)}\n{generation_bench.text(result)}")
        return
    m = result["models"]["model"]
    out.print(f"Latency {report.where(result)}")
    out.print(
        f"onnxruntime {result['onnxruntime']}, {result['provider']}, {result['threads']} threads "
        f"(target: {result['target_threads']}); model {m['size_bytes'] / 1e6:.1f} MB, session "
        f"load {m['load_ms']:.0f} ms, first inference {m['first_inference_ms']:.1f} ms; peak RSS "
        f"{result['peak_rss_mb']} MB"
    )
    out.print(tables.bench_table(result))


device_cli.register(main, handle_errors, out, err)  # check, compare, bench --import/--remote
main.add_command(cache)
