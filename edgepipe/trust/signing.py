"""Signing a bundle with model-signing's EC key or certificate method, and checking a signature
on the host."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, VerifyError
from ..runtime.integrity import SIGNATURE
from ..runtime.signature import KeyFileError, SignatureError, verify_signature
from . import keys


@dataclass(frozen=True)
class SigningKey:
    """A PEM EC private key, with the certificate that vouches for it (and its chain) or none."""

    private_key: Path
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()

    def check(self) -> None:
        """ConfigError unless the key (and the certificates) can sign: before a build, not after."""
        keys.check_private_key(self.private_key)
        if self.certificate is None:
            if self.chain:
                raise ConfigError("--certificate-chain goes with --certificate")
            return
        _signer(self)


def _signer(key: SigningKey) -> Any:
    """model-signing's EC key (or certificate) signer, changed in two ways so that the same key and files give the
    same signature bytes (and so the same archive), verifiable by any model-signing verifier:

    - the in-toto statement is serialized with sorted keys: model-signing 1.1 leaves the order of
      the protobuf Struct's keys to the protobuf runtime, which changes it from process to process;
    - ECDSA's nonce is derived from the key and the message (RFC 6979, cryptography's
      ``deterministic_signing``) instead of OpenSSL's random one.
    """
    import base64

    from cryptography.hazmat.primitives.asymmetric import ec
    from google.protobuf import json_format
    from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore_pb, signing
    from sigstore_models import intoto
    from sigstore_models.bundle import v1 as bundle_pb

    base = sign_ec_key.Signer if key.certificate is None else sign_certificate.Signer

    class Signer(base):  # type: ignore[valid-type,misc]
        def sign(self, payload: signing.Payload) -> sign_sigstore_pb.Signature:
            raw = json_format.MessageToJson(payload.statement.pb, sort_keys=True).encode()
            private: Any = self._private_key  # an EllipticCurvePrivateKey: the base class checked
            algorithm = sign_ec_key.get_ec_key_hash(private.public_key())
            sig = private.sign(sign_sigstore_pb.pae(raw), ec.ECDSA(algorithm, deterministic_signing=True))
            envelope = intoto.Envelope(
                payload=base64.b64encode(raw),
                payload_type=signing._IN_TOTO_JSON_PAYLOAD_TYPE,
                signatures=[intoto.Signature(sig=base64.b64encode(sig), keyid="")],
            )
            return sign_sigstore_pb.Signature(
                bundle_pb.Bundle(
                    media_type=sign_sigstore_pb._BUNDLE_MEDIA_TYPE,  # type: ignore[arg-type]
                    verification_material=self._get_verification_material(),
                    dsse_envelope=envelope,
                )
            )

    if key.certificate is None:
        return Signer(key.private_key, keys.password())
    if keys.password():
        raise ConfigError("model-signing signs with a certificate only by an unencrypted key")
    try:
        return Signer(key.private_key, key.certificate, key.chain)
    except OSError as exc:
        raise ConfigError(f"{exc.filename}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"{key.certificate}: cannot sign with it: {exc}") from None


def sign_dir(root: Path, key: SigningKey) -> Path:
    """Write ``root/model.sig`` over every other file in ``root``; return its path."""
    from model_signing import hashing
    from model_signing._signing import signing

    key.check()
    signer = _signer(key)
    # One ignored path: the statement lists them from a set, whose order changes run to run.
    hashed = hashing.Config().set_ignored_paths(paths=[SIGNATURE], ignore_git_paths=False)
    (root / SIGNATURE).unlink(missing_ok=True)
    signer.sign(signing.Payload(hashed.hash(root))).write(root / SIGNATURE)
    return root / SIGNATURE


def check(root: Path, public_key: Path | None, certificate_chain: Sequence[Path], shown: Path) -> None:
    """VerifyError unless ``root``'s signature was made with ``public_key``'s pair, or a
    certificate ``certificate_chain`` trusts, over its files (ConfigError: an unusable key)."""
    try:
        verify_signature(root, public_key, certificate_chain, shown)
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None
    except SignatureError as exc:
        raise VerifyError(str(exc)) from None
