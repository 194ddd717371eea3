"""Trust commands: signing keys, signatures, the bill of materials, and verify."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import err, handle_errors, path_option, signing_options


@click.command()
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Directory for the pair.")
@handle_errors
def keygen(out: Path) -> None:
    """Make a P-256 signing key pair: DIR/private.pem (mode 0600) and DIR/public.pem."""
    from ..trust.keys import keygen as make_pair

    private, public = make_pair(out)
    err.print(f"private key: {private} (keep it secret: a CI secret, never in a bundle)")
    err.print(f"public key:  {public} (ship it to the devices: verify --public-key)")


@click.command()
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(exists=True, file_okay=False, path_type=Path))
@signing_options("--")
@handle_errors
def sign(
    bundle_dir: Path,
    key: Path | None,
    certificate: Path | None,
    certificate_chain: tuple[Path, ...],
) -> None:
    """Sign BUNDLE (model.sig, with model-signing) and rewrite its archive."""
    from ..engine.publish import sign_bundle
    from ..trust.signing import SigningKey

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
    from ..trust.sbom import show

    click.echo(show(path), nl=False)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@path_option("--public-key", "Check the bundle's signature (model.sig) with this PEM EC public key.")
@path_option(
    "--certificate-chain",
    "Or check a certificate-signed bundle against these trusted certificates (repeatable).",
    multiple=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def verify(path: Path, public_key: Path | None, certificate_chain: tuple[Path, ...], as_json: bool) -> None:
    """Check a bundle directory or .tar.gz against its signature (with a key) and manifest."""
    from ..trust.verify import verify as run_verify

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
