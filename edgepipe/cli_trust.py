"""Trust commands (issue 16): signing keys, signatures and the bill of materials."""

from __future__ import annotations

from pathlib import Path

import click

from .cli_common import err, handle_errors, signing_options


@click.command()
@click.option(
    "--out", "-o", required=True, type=click.Path(path_type=Path), help="Directory for the pair."
)
@handle_errors
def keygen(out: Path) -> None:
    """Make a P-256 signing key pair: DIR/private.pem (mode 0600) and DIR/public.pem."""
    from .keys import keygen as make_pair

    private, public = make_pair(out)
    err.print(f"private key: {private} (keep it secret: a CI secret, never in a bundle)")
    err.print(f"public key:  {public} (ship it to the devices: verify --public-key)")


@click.command()
@click.argument(
    "bundle_dir", metavar="BUNDLE", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@signing_options("--")
@handle_errors
def sign(
    bundle_dir: Path,
    key: Path | None,
    certificate: Path | None,
    certificate_chain: tuple[Path, ...],
) -> None:
    """Sign BUNDLE (model.sig, with model-signing) and rewrite its archive."""
    from .build.publish import sign_bundle
    from .signing import SigningKey

    if key is None:
        raise click.UsageError("Missing option '--key'.")
    archived = sign_bundle(bundle_dir, SigningKey(key, certificate, certificate_chain))
    written = "model.sig" + (f", {bundle_dir.name}.tar.gz" if archived else "")
    err.print(f"signed {bundle_dir}: {written}")


@click.command("sbom")
@click.argument("path", metavar="BUNDLE", type=click.Path(path_type=Path))
@handle_errors
def sbom_command(path: Path) -> None:
    """Print the CycloneDX 1.6 SBOM (sbom.cdx.json) of a bundle directory or .tar.gz."""
    from .sbom import show

    click.echo(show(path), nl=False)
