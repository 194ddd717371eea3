"""``edgepipe bench`` (here, ``--remote`` over SSH, or ``--import``ed from a device), ``check`` and
``compare``: the measuring commands, whole in one place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..errors import BudgetError
from . import tables
from .common import err, handle_errors, out

BUNDLE = click.Path(exists=True, file_okay=False, path_type=Path)
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    from ..runtime.encoder_bench import ShapeError, parse_sizes

    try:
        return None if value is None else parse_sizes(value, f"--{param.name}".replace("_", "-"))
    except ShapeError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("bench")
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--batch-sizes", default="1", show_default=True, callback=_sizes, help="Comma-separated.")
@click.option(
    "--seq-lens",
    callback=_sizes,
    help="Comma-separated tokens; default 128 or the model's maximum.",
)
@click.option("--runs", default=30, show_default=True, type=click.IntRange(1), help="Timed runs per shape.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0), help="Untimed runs first.")
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
@click.option("--write/--no-write", default=True, show_default=True, help="Record the results in the bundle.")
@click.option(
    "--import",
    "import_file",
    type=FILE,
    help="Record a device's `python BUNDLE bench --json` output instead of measuring here.",
)
@click.option(
    "--remote", metavar="[USER@]HOST[:PORT]", help="Measure on this device over SSH (the system ssh/scp) and record it."
)
@click.option("--ssh-config", type=FILE, help="--remote: ssh's -F.")
@click.option("--identity", type=FILE, help="--remote: ssh's -i.")
@click.option(
    "--remote-python",
    metavar="PATH",
    help="--remote: a Python that has the bundle's requirements; default: a new venv.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the edgepipe.bench/1 JSON on stdout.")
@handle_errors
def bench(
    import_file: Path | None,
    remote: str | None,
    ssh_config: Path | None,
    identity: Path | None,
    remote_python: str | None,
    **kwargs: Any,
) -> None:
    """Measure BUNDLE's latency here (or on a device: --remote, --import), beside the fp32 model, and record it in the bundle."""
    # The device options are sorted out here; the rest go to _measure_here (typed) or _on_device as they came.
    # click's usage errors pass handle_errors through, so they exit 2.
    if not (import_file or remote):
        if ssh_config or identity or remote_python:
            raise click.UsageError("--ssh-config, --identity and --remote-python need --remote")
        return _measure_here(**kwargs)
    if import_file and remote:
        raise click.UsageError("--import and --remote contradict each other")
    if kwargs["baseline_model"]:
        raise click.UsageError("--baseline-model is for measuring here, not on a device")
    if import_file and not kwargs["write"]:
        raise click.UsageError("--import records; --no-write would leave nothing to do")
    return _on_device(import_file, remote, ssh_config, identity, remote_python, kwargs)


def _measure_here(
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
    """Measure BUNDLE here, beside the fp32 model."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ..bench import host, report
    from ..engine.publish import record_bench
    from ..runtime import generation_bench
    from ..runtime.encoder_bench import BenchSettings, incomplete_message
    from ..runtime.signature import is_signed
    from ..stages.bundle import DOCUMENTS

    if baseline_model and not baseline:
        raise click.UsageError("--baseline-model and --no-baseline contradict each other")
    shown = None
    if baseline and baseline_model is None:
        baseline_model, shown, warning = host.default_baseline(bundle_dir)
        if warning:
            err.print(warning)
    settings = BenchSettings(batch_sizes, seq_lens, runs, warmup, threads, max_seconds)
    with Progress(
        "bench",
        BarColumn(),
        MofNCompleteColumn(),
        "runs",
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
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


def _bench_args(kwargs: dict[str, Any], generation: bool) -> list[str]:
    """The host bench's options that `python BUNDLE bench` takes too (a decoder's: threads only;
    its runs default to the bundle's own)."""
    args = ["--threads", str(kwargs["threads"])] if kwargs.get("threads") else []
    if generation:
        return args
    args += ["--runs", str(kwargs["runs"]), "--warmup", str(kwargs["warmup"])]
    args += ["--batch-sizes", ",".join(map(str, kwargs["batch_sizes"]))]
    if kwargs.get("seq_lens"):
        args += ["--seq-lens", ",".join(map(str, kwargs["seq_lens"]))]
    if kwargs.get("max_seconds"):
        args += ["--max-seconds", str(kwargs["max_seconds"])]
    return args


def _on_device(
    import_file: Path | None,
    remote: str | None,
    ssh_config: Path | None,
    identity: Path | None,
    remote_python: str | None,
    kwargs: dict[str, Any],
) -> None:
    """--import or --remote: the device's numbers, recorded in the bundle."""
    from ..bench import device
    from ..bench.budgets import is_generation, manifest_of
    from ..engine.publish import record_bench

    root = kwargs["bundle_dir"]
    archived: bool | None
    if import_file:
        result = device.load_result(import_file)
        result, archived = device.record_device(root, result, str(import_file), record_bench)
    else:
        target = device.Remote.parse(remote or "", ssh_config, identity)
        args = _bench_args(kwargs, is_generation(manifest_of(root)))
        result, archived = device.bench_remote(
            root,
            target,
            args,
            remote_python,
            lambda m: err.print(f"{target.name}: {m}"),
            record_bench if kwargs["write"] else None,
        )
    if archived is None:  # --no-write: measured on the device, printed, not recorded
        click.echo(json.dumps(result, ensure_ascii=False))
        return
    where = (result.get("probe") or result.get("machine") or {}).get("cpu", "?")
    archive = f" and {root.name}.tar.gz" if archived else ""
    err.print(f"recorded the device's ({where}) benchmark in {root}{archive} as device_bench")
    if kwargs.get("as_json"):
        click.echo(json.dumps(result, ensure_ascii=False))


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=BUNDLE)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def check(bundle_dir: Path, as_json: bool) -> None:
    """Check BUNDLE's newest measurement against its target's budgets (exit 9 if broken)."""
    from ..bench.budgets import check as run_check
    from ..runtime.integrity import read_manifest

    try:
        licence = read_manifest(bundle_dir).get("licence")
    except ValueError:
        licence = None  # run_check says what is wrong with the bundle
    shown = licence_line(licence)
    if not as_json and shown:
        out.print(shown, highlight=False)
    result = run_check(bundle_dir)
    if as_json:
        click.echo(json.dumps({**result, "licence": licence}))
    else:
        title = f"{bundle_dir.name}: target {result['target']}'s budgets"
        out.print(tables.rows_table(result["budgets"], title))
    if not result["ok"]:
        raise BudgetError(
            f"{bundle_dir.name} breaks its target's budget for {', '.join(result['broken'])} "
            f"(measured on the {result['measured_on']})"
        )


def licence_line(licence: dict[str, Any] | None) -> str | None:
    """`check`'s line for the bundle's licence (bundles before issue 25 have none recorded)."""
    if not licence:
        return None
    if licence.get("expression") is None:
        return "licence: none declared (NOASSERTION)"
    files = ", ".join(licence.get("files") or []) or "no licence files"
    return f"licence: {licence['expression']} ({files})"


@click.command()
@click.argument("old", type=BUNDLE)
@click.argument("new", type=BUNDLE)
@click.option(
    "--max-accuracy-drop",
    type=click.FloatRange(0),
    help="Fail (exit 9) when NEW's accuracy is lower than OLD's by more than this.",
)
@click.option(
    "--max-slowdown",
    type=click.FloatRange(0, min_open=True),
    help="Fail (exit 9) when NEW is more than this many times slower (e.g. 1.10).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def compare(
    old: Path,
    new: Path,
    max_accuracy_drop: float | None,
    max_slowdown: float | None,
    as_json: bool,
) -> None:
    """Accuracy, size and speed of NEW against OLD: two bundles of one model and target."""
    from ..bench.budgets import compare as run_compare

    result = run_compare(old, new, max_accuracy_drop, max_slowdown)
    if as_json:
        click.echo(json.dumps(result))
    else:
        out.print(tables.rows_table(result["rows"], f"{old.name} -> {new.name}"))
    if not result["ok"]:
        raise BudgetError(f"{new.name} is past the limit for {', '.join(result['broken'])}")
