"""A bundle's signature: model-signing's Sigstore bundle (DSSE over an in-toto statement naming
every file's sha256), checked on the build host and on the device.

model-signing is imported only when a signature is checked, so the bundle runs without it.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
from pathlib import Path

from .integrity import SIGNATURE

INSTALL = "pip install 'model-signing>=1.1.1,<1.2'"


class SignatureError(ValueError):
    """The signature is missing, unreadable, made with another key or over other files."""


class KeyFileError(ValueError):
    """The public key file is missing or not a supported EC key; or model-signing is missing."""


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


def verify_signature(root: Path, public_key: Path, shown: Path | None = None) -> None:
    """SignatureError unless ``root/model.sig`` was made with ``public_key``'s private key over
    exactly the files ``root`` holds (``__pycache__`` aside); KeyFileError for the key itself."""
    shown = shown or root
    path = root / SIGNATURE
    if not path.is_file():
        raise SignatureError(
            f"{shown}: not signed (no {SIGNATURE}), but a public key was given; sign it with "
            "`edgepipe sign BUNDLE --key private.pem`"
        )
    try:
        from model_signing import hashing, verifying
    except ModuleNotFoundError:
        raise KeyFileError(
            f"checking a signature needs model-signing, which this Python lacks: {INSTALL}"
        ) from None
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=public_key)
    except FileNotFoundError:
        raise KeyFileError(f"{public_key}: no such public key file") from None
    except (ValueError, TypeError, OSError) as exc:
        raise KeyFileError(
            f"{public_key}: not a PEM EC public key on P-256/384/521 ({exc})"
        ) from None
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SignatureError(f"{shown}: unreadable signature {SIGNATURE} ({exc})") from None
    # Running the bundle writes bytecode; it is neither signed nor in the manifest.
    ignored = [SIGNATURE, *(str(p.relative_to(root)) for p in root.rglob("__pycache__"))]
    config.set_hashing_config(
        hashing.Config().set_ignored_paths(paths=ignored, ignore_git_paths=False)
    )
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
            ) from None
        if message.startswith("Signature mismatch"):
            raise SignatureError(
                f"{shown}: files differ from what was signed: {_mismatch(exc)}"
            ) from None
        raise SignatureError(f"{shown}: invalid signature {SIGNATURE} ({message})") from None
