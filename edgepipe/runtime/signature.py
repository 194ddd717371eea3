"""A bundle's signature: model-signing's Sigstore bundle (DSSE over an in-toto statement naming
every file's sha256), checked on the build host and on the device.

model-signing is imported only when a signature is checked, so the bundle runs without it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .integrity import SIGNATURE

# model-signing 1.1.1 imports pyOpenSSL without requiring it.
INSTALL = "pip install 'model-signing>=1.1.1,<1.2' pyopenssl"


class SignatureError(ValueError):
    """The signature is missing, unreadable, made with another key or over other files."""


class KeyFileError(ValueError):
    """The public key or certificate file is missing or unusable; or model-signing is missing."""


def is_signed(root: Path) -> bool:
    return (root / SIGNATURE).is_file()


def _mismatch(exc: Exception) -> str:
    """model-signing's "Signature mismatch: [...]" list, as its first entry."""
    text = str(exc).removeprefix("Signature mismatch: ")
    try:
        diffs = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        diffs = [text]
    if not isinstance(diffs, list) or not diffs:
        diffs = [text]
    more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
    first = str(diffs[0]).split(": Expected")[0]
    return f"{first}{more}"


def _verifier(public_key: Path | None, chain: Sequence[Path]) -> Any:
    """model-signing's verifying config for a public key, or for a certificate chain to trust."""
    try:
        from model_signing import verifying
    except ModuleNotFoundError:
        raise KeyFileError(f"checking a signature needs model-signing, which this Python lacks: {INSTALL}") from None
    trusted = str(public_key) if public_key else ", ".join(map(str, chain))
    try:
        if public_key is not None:
            return verifying.Config().use_elliptic_key_verifier(public_key=public_key)
        return verifying.Config().use_certificate_verifier(certificate_chain=chain)
    except FileNotFoundError as exc:
        raise KeyFileError(f"{exc.filename or trusted}: no such file") from None
    except (ValueError, TypeError, OSError) as exc:
        what = "a PEM EC public key on P-256/384/521" if public_key else "PEM certificates"
        raise KeyFileError(f"{trusted}: not {what} ({exc})") from None


def verify_signature(
    root: Path,
    public_key: Path | None = None,
    certificate_chain: Sequence[Path] = (),
    shown: Path | None = None,
) -> None:
    """SignatureError unless ``root/model.sig`` was made with ``public_key``'s private key, or with
    a certificate issued under ``certificate_chain``, over exactly the files ``root`` holds
    (``__pycache__`` aside); KeyFileError for the key or certificates themselves."""
    shown = shown or root
    path = root / SIGNATURE
    if not path.is_file():
        raise SignatureError(
            f"{shown}: not signed (no {SIGNATURE}), but a key to check it was given; sign it with "
            "`edgepipe sign BUNDLE --key private.pem`"
        )
    config = _verifier(public_key, certificate_chain)
    from model_signing import hashing

    try:
        material = json.loads(path.read_text(encoding="utf-8"))["verificationMaterial"]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as exc:
        raise SignatureError(f"{shown}: unreadable signature {SIGNATURE} ({exc!r})") from None
    by_certificate = isinstance(material, dict) and "x509CertificateChain" in material
    if certificate_chain and not by_certificate:
        raise SignatureError(f"{shown}: signed with a key, not a certificate: check it with --public-key")
    # Running the bundle writes bytecode; it is neither signed nor in the manifest.
    ignored = [SIGNATURE, *(str(p.relative_to(root)) for p in root.rglob("__pycache__"))]
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=False))
    try:
        # It prints a warning of its own (an old signature format) on stdout: one line, ours.
        with contextlib.redirect_stdout(io.StringIO()):
            config.verify(root, path)
    except Exception as exc:  # any failure to verify means "not verified": fail closed, one line
        from cryptography.exceptions import InvalidSignature

        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, InvalidSignature) or message.startswith("Key mismatch"):
            raise SignatureError(
                f"{shown}: the signature was not made with the private key of {public_key}"
                if public_key
                else f"{shown}: the signature was not made with its certificate's key"
            ) from None
        if type(exc).__name__ == "X509StoreContextError":  # pyOpenSSL's, for the chain
            raise SignatureError(
                f"{shown}: the signing certificate is not trusted by "
                f"{', '.join(map(str, certificate_chain))} ({message})"
            ) from None
        if message.startswith("Signature mismatch"):
            raise SignatureError(f"{shown}: files differ from what was signed: {_mismatch(exc)}") from None
        raise SignatureError(f"{shown}: invalid signature {SIGNATURE} ({message})") from None
