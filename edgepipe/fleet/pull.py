"""``edgepipe pull``: the bundle runtime's own OCI pull (runtime/update.py, the code a device runs),
its failures as edgepipe's errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError, RegistryError, VerifyError
from ..runtime import oci, update
from ..runtime.signature import KeyFileError, SignatureError


def pull(
    target: str, out: Path, public_key: Path | None = None, progress: update.Progress | None = None
) -> dict[str, Any]:
    """Pull ``target`` into ``out``; nothing is written there unless every digest, the manifest and
    (with ``public_key``) the signature check out."""
    try:
        return update.pull(target, out, public_key, progress or (lambda line: None))
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None
    except (oci.DigestError, SignatureError) as exc:
        raise VerifyError(str(exc)) from None
    except oci.RegistryError as exc:
        raise RegistryError(str(exc)) from None
    except update.UpdateError as exc:
        raise VerifyError(str(exc)) from None
