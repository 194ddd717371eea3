"""Fleet commands: push a bundle to an OCI registry, pull one back."""

from __future__ import annotations

from pathlib import Path

import click

from .common import err, handle_errors


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("target", metavar="oci://REGISTRY/REPO:TAG")
@handle_errors
def push(bundle_dir: Path, target: str) -> None:
    """Push BUNDLE as a ModelPack OCI artifact; its SBOM and signature as referrers.

    Credentials come from the Docker config (DOCKER_CONFIG or ~/.docker/config.json); loopback
    registries and those in EDGEPIPE_REGISTRY_PLAIN_HTTP are spoken to over http.
    """
    from ..fleet.push import push as run_push

    pushed = run_push(bundle_dir, target)
    err.print(f"pushed {bundle_dir.name}: {pushed.layers} files as {pushed.reference}@{pushed.digest}")
    how = "Referrers API" if pushed.referrers_api else f"tag {pushed.digest.replace(':', '-')}"
    for artifact, digest in pushed.referrers.items():
        err.print(f"  referrer {artifact}: {digest} ({how})")
    click.echo(pushed.digest)


@click.command()
@click.argument("target", metavar="oci://REGISTRY/REPO:TAG")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="New folder for the bundle.")
@click.option("--public-key", type=click.Path(path_type=Path), help="Check the signature with this PEM EC key.")
@handle_errors
def pull(target: str, out: Path, public_key: Path | None) -> None:
    """Pull a bundle; every digest (and the signature) is checked before OUT is written."""
    from ..fleet.pull import pull as run_pull

    manifest = run_pull(target, out, public_key, lambda line: err.print(line, highlight=False))
    signed = "signature checked" if public_key else "signature not checked (no --public-key)"
    err.print(f"pulled {manifest.get('name')} into {out}: {len(manifest['files'])} files match; {signed}")
