"""The device loop's commands: ``check``, ``compare``, and ``bench --import/--remote``.

Registered onto cli.py's group by ``register`` (click commands only: parse, call one library
function, render), so cli.py stays one screenful per command and imports nothing circular.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from . import tables
from .errors import BudgetError

BUNDLE = click.Path(exists=True, file_okay=False, path_type=Path)
FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


DEVICE_OPTIONS = [
    click.Option(
        ["--import", "import_file"],
        type=FILE,
        help="Record a device's `python BUNDLE bench --json` output instead of measuring here.",
    ),
    click.Option(
        ["--remote"],
        metavar="[USER@]HOST[:PORT]",
        help="Measure on this device over SSH (the system ssh/scp) and record it.",
    ),
    click.Option(
        ["--ssh-config"],
        type=FILE,
        help="--remote: ssh's -F.",
    ),
    click.Option(
        ["--identity"],
        type=FILE,
        help="--remote: ssh's -i.",
    ),
    click.Option(
        ["--remote-python"],
        metavar="PATH",
        help="--remote: a Python that has the bundle's requirements; default: a new venv.",
    ),
]


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


def _extend_bench(bench: click.Command, handle_errors: Callable[[Any], Any], err: Console) -> None:
    """`edgepipe bench` with --import and --remote: the device's numbers, recorded in the bundle."""
    bench.params.extend(DEVICE_OPTIONS)
    measure_here = bench.callback
    assert measure_here is not None

    @handle_errors
    def on_device(import_file: Path | None, remote: str | None, ssh_config: Path | None,
                  identity: Path | None, remote_python: str | None, kwargs: dict[str, Any]) -> None:  # fmt: skip
        from . import device
        from .budgets import is_generation, manifest_of

        root = kwargs["bundle_dir"]
        archived: bool | None
        if import_file:
            result = device.load_result(import_file)
            result, archived = device.record_device(root, result, str(import_file))
        else:
            target = device.Remote.parse(remote or "", ssh_config, identity)
            args = _bench_args(kwargs, is_generation(manifest_of(root)))
            result, archived = device.bench_remote(
                root,
                target,
                args,
                remote_python,
                lambda m: err.print(f"{target.name}: {m}"),
                record=kwargs["write"],
            )
        if archived is None:  # --no-write: measured on the device, printed, not recorded
            click.echo(json.dumps(result, ensure_ascii=False))
            return
        where = (result.get("probe") or result.get("machine") or {}).get("cpu", "?")
        archive = f" and {root.name}.tar.gz" if archived else ""
        err.print(f"recorded the device's ({where}) benchmark in {root}{archive} as device_bench")
        if kwargs.get("as_json"):
            click.echo(json.dumps(result, ensure_ascii=False))

    # Usage errors are click's (exit 2), so they are raised outside handle_errors.
    @functools.wraps(measure_here)
    def callback(
        import_file: Path | None,
        remote: str | None,
        ssh_config: Path | None,
        identity: Path | None,
        remote_python: str | None,
        **kwargs: Any,
    ) -> None:
        if not (import_file or remote):
            if ssh_config or identity or remote_python:
                raise click.UsageError("--ssh-config, --identity and --remote-python need --remote")
            return measure_here(**kwargs)
        if import_file and remote:
            raise click.UsageError("--import and --remote contradict each other")
        if kwargs.get("baseline_model"):
            raise click.UsageError("--baseline-model is for measuring here, not on a device")
        if import_file and not kwargs["write"]:
            raise click.UsageError("--import records; --no-write would leave nothing to do")
        return on_device(import_file, remote, ssh_config, identity, remote_python, kwargs)

    bench.callback = callback


def register(
    main: click.Group, handle_errors: Callable[[Any], Any], out: Console, err: Console
) -> None:
    """Add the device loop's commands to ``main``."""
    _extend_bench(main.commands["bench"], handle_errors, err)

    @main.command()
    @click.argument("bundle_dir", metavar="BUNDLE", type=BUNDLE)
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @handle_errors
    def check(bundle_dir: Path, as_json: bool) -> None:
        """Check BUNDLE's newest measurement against its target's budgets (exit 9 if broken)."""
        from .budgets import check as run_check

        result = run_check(bundle_dir)
        if as_json:
            click.echo(json.dumps(result))
        else:
            title = f"{bundle_dir.name}: target {result['target']}'s budgets"
            out.print(tables.rows_table(result["budgets"], title))
        if not result["ok"]:
            raise BudgetError(
                f"{bundle_dir.name} breaks its target's budget for {', '.join(result['broken'])} "
                f"(measured on the {result['measured_on']})"
            )

    @main.command()
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
        from .budgets import compare as run_compare

        result = run_compare(old, new, max_accuracy_drop, max_slowdown)
        if as_json:
            click.echo(json.dumps(result))
        else:
            out.print(tables.rows_table(result["rows"], f"{old.name} -> {new.name}"))
        if not result["ok"]:
            raise BudgetError(f"{new.name} is past the limit for {', '.join(result['broken'])}")
