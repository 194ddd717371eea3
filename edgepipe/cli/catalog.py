"""The listing commands: targets, profiles, models and the CI build matrix."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .. import catalog
from ..catalog import families
from . import tables
from .common import dirs_option, handle_errors, out


@click.command()
@dirs_option("targets")
@handle_errors
def targets(targets_dirs: tuple[Path, ...]) -> None:
    """List the devices edgepipe can build for."""
    out.print(tables.targets_table(catalog.targets(targets_dirs).all()))


@click.command()
@dirs_option("profiles")
@handle_errors
def profiles(profiles_dirs: tuple[Path, ...]) -> None:
    """List the quantization recipes."""
    out.print(tables.profiles_table(catalog.profiles(profiles_dirs).all()))


@click.command()
@click.option("--markdown", is_flag=True, help="The docs' supported-models table, as Markdown.")
@handle_errors
def models(markdown: bool) -> None:
    """List the model families (Hugging Face model_type) edgepipe builds."""
    if markdown:
        click.echo(families.markdown_table(), nl=False)
    else:
        out.print(tables.models_table(list(families.FAMILIES.values())))


@click.command()
@click.option("--target", "-t", "target_names", multiple=True, help="Targets (default: all).")
@click.option("--model", "-m", "models", multiple=True, help="Model dirs (default: the packaged one).")
@click.option("--format", "fmt", type=click.Choice(["json", "github"]), default="json", show_default=True)
@dirs_option("targets")
@handle_errors
def matrix(target_names: tuple[str, ...], models: tuple[str, ...], fmt: str, targets_dirs: tuple[Path, ...]) -> None:
    """Print the target x model build matrix for CI systems that fan out across machines."""
    store = catalog.targets(targets_dirs)
    chosen = [store.load(n) for n in target_names] if target_names else store.all()
    rows = [
        {"target": t.name, "profile": t.default_profile, "model": m, "arch": t.platform.arch}
        for m in (models or ("default",))
        for t in chosen
    ]
    click.echo(json.dumps({"include": rows} if fmt == "github" else rows))
