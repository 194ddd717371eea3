"""The command line: one module per command group (build, bench, trust, catalog, cache, fleet), each of
which parses, calls one library function and renders; the only place that prints or exits."""

from __future__ import annotations

import click

from .. import __version__
from .bench import bench, check, compare
from .build import build
from .cache import cache
from .catalog import matrix, models, profiles, targets
from .fleet import pull, push
from .trust import keygen, sbom_command, sign, verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgepipe")
def main() -> None:
    """Export, quantize, verify, benchmark and bundle a model for one edge device."""


for command in (
    build,
    verify,
    bench,
    check,
    compare,
    keygen,
    sign,
    sbom_command,
    targets,
    profiles,
    models,
    matrix,
    cache,
    push,
    pull,
):
    main.add_command(command)
