"""The bundle's fleet commands: ``update oci://...``, ``rollback``, ``service``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from . import integrity, oci, update
from .signature import KeyFileError, SignatureError

EXIT_SETUP, EXIT_ACCURACY, EXIT_VERIFY, EXIT_REGISTRY = 3, 5, 6, 11


def add_parsers(sub: Any) -> None:
    up = sub.add_parser("update", help="pull a new version from an OCI registry, check it, swap it in")
    up.add_argument("target", metavar="oci://REGISTRY/REPO:TAG", help="the version to run")
    up.add_argument("--public-key", metavar="PEM", help="check its signature (required when this bundle is signed)")
    sub.add_parser("rollback", help="swap the previous version (BUNDLE.previous) back in")
    service = sub.add_parser("service", help="write a systemd unit that runs `serve`")
    service.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user)")
    service.add_argument("--port", type=int, default=8080, help="serve's port (8080)")
    service.add_argument("--out", help="write the unit here instead")


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _failed(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    if isinstance(exc, KeyFileError):
        return EXIT_SETUP
    if isinstance(exc, update.SelftestError):
        return EXIT_ACCURACY
    if isinstance(exc, oci.RegistryError) and not isinstance(exc, oci.DigestError):
        return EXIT_REGISTRY
    return EXIT_VERIFY


def run_update(root: Path, args: argparse.Namespace) -> int:
    was = integrity.read_manifest(root).get("name") if (root / integrity.MANIFEST).is_file() else None
    try:
        manifest = update.update(root, args.target, args.public_key and Path(args.public_key), _progress)
    except (oci.RegistryError, update.UpdateError, SignatureError, KeyFileError) as exc:
        return _failed(exc)
    print(f"updated {root}: {manifest.get('name')} from {args.target} (the replaced {was} is {root.name}.previous)")
    print(f"a service runs the new version after: systemctl [--user] restart {update.unit_name(root)}", file=sys.stderr)
    return 0


def run_rollback(root: Path, args: argparse.Namespace) -> int:
    try:
        manifest = update.rollback(root)
    except update.UpdateError as exc:
        return _failed(exc)
    print(f"rolled back {root} to {manifest.get('name')} (the newer one is {root.name}.previous)")
    return 0


def run_service(root: Path, args: argparse.Namespace) -> int:
    path = update.service(root, args.port, args.user, Path(args.out) if args.out else None)
    scope = "--user " if args.user else ""
    print(f"wrote {path}; start it with: systemctl {scope}daemon-reload && systemctl {scope}enable --now {path.name}")
    return 0


HANDLERS = {"update": run_update, "rollback": run_rollback, "service": run_service}
