"""Signing keys: `edgepipe keygen`'s P-256 pair, and the checks a key passes before a build uses it."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

PRIVATE, PUBLIC = "private.pem", "public.pem"
# The curves model-signing (and Sigstore's bundle format) accept.
CURVES = ("secp256r1", "secp384r1", "secp521r1")
# An encrypted private key's passphrase, read from the environment (never an option: shell history).
PASSWORD_ENV = "EDGEPIPE_SIGNING_KEY_PASSWORD"


def password() -> str | None:
    return os.environ.get(PASSWORD_ENV) or None


def keygen(out: Path) -> tuple[Path, Path]:
    """Write a new P-256 pair into ``out``: ``private.pem`` (mode 0600) and ``public.pem``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = out / PRIVATE, out / PUBLIC
    for path in (private, public):
        if path.exists():
            raise ConfigError(f"{path} exists; keygen never overwrites a key: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 (O_EXCL: not through a file or link someone put there), never readable by others.
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def check_private_key(path: Path) -> None:
    """ConfigError unless ``path`` is a PEM EC private key on a curve model-signing signs with."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the private key ({exc.strerror})") from None
    secret = password()
    try:
        key = serialization.load_pem_private_key(data, secret.encode() if secret else None)
    except TypeError:
        raise ConfigError(
            f"{path}: the private key is encrypted: put its passphrase in {PASSWORD_ENV}"
            if secret is None
            else f"{path}: the private key is not encrypted; unset {PASSWORD_ENV}"
        ) from None
    except ValueError:
        raise ConfigError(
            f"{path}: not a PEM private key (or a wrong passphrase); make one with `edgepipe keygen --out DIR`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in CURVES:
        raise ConfigError(f"{path}: not an EC private key on P-256, P-384 or P-521")
