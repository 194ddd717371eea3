"""The device loop's commands: ``check``, ``compare``, and ``bench --import/--remote``.

Registered onto cli.py's group by ``register`` (click commands only: parse, call one library
function, render), so cli.py stays one screenful per command and imports nothing circular.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from . import tables
from .errors import BudgetError

BUNDLE = click.Path(exists=True, file_okay=False, path_type=Path)


def register(
    main: click.Group, handle_errors: Callable[[Any], Any], out: Console, err: Console
) -> None:
    """Add the device loop's commands to ``main``."""

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
