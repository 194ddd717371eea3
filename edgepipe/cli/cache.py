"""`edgepipe cache`: inspect or empty the stage cache."""

from __future__ import annotations

import json

import click
from rich.table import Table

from .common import err, handle_errors, out


@click.group()
def cache() -> None:
    """Inspect or empty the stage cache (EDGEPIPE_CACHE_DIR, default ~/.cache/edgepipe)."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def cache_info(as_json: bool) -> None:
    """Where the cache is and what it holds."""
    from ..cache import StageCache, default_dir

    info = StageCache(default_dir()).info()
    if as_json:
        click.echo(json.dumps(info))
        return
    table = Table("stage", "entries", "MB", title=info["path"])
    for stage, s in info["stages"].items():
        table.add_row(stage, str(s["entries"]), f"{s['bytes'] / 1e6:.1f}")
    table.add_row("total", str(info["entries"]), f"{info['bytes'] / 1e6:.1f}")
    out.print(table)


@cache.command("clear")
@handle_errors
def cache_clear() -> None:
    """Remove every cache entry."""
    from ..cache import StageCache, default_dir

    store = StageCache(default_dir())
    err.print(f"removed {store.clear()} entries from {store.root}")
