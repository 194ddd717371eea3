"""A small OCI registry client on the standard library: what a device needs to pull a bundle.

Reads manifests and blobs (every one checked against its sha256 digest), finds referrers with the
Referrers API or its tag-schema fallback, and authenticates as Docker does: credentials from the
Docker config (``DOCKER_CONFIG`` or ``~/.docker/config.json``), basic or bearer-token auth.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
FILEPATH = "org.cncf.model.filepath"
SBOM_ARTIFACT = "application/vnd.cyclonedx+json"
SIGNATURE_ARTIFACT = "application/vnd.dev.sigstore.bundle.v0.3+json"
_REF = re.compile(
    r"^oci://(?P<registry>[^/]+)/(?P<repo>[a-z0-9][a-z0-9._/-]*?)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20
TIMEOUT = 30.0


class RegistryError(ValueError):
    """The registry cannot be reached, refuses us, or sent something that is not what it names."""


class DigestError(RegistryError):
    """What the registry sent is not what its digest names: corrupt or tampered with."""


class AuthError(RegistryError):
    """The registry refused the credentials (or there were none)."""


@dataclass(frozen=True)
class Reference:
    registry: str
    repo: str
    reference: str  # a tag or a sha256: digest

    @classmethod
    def parse(cls, text: str) -> Reference:
        match = _REF.match(text)
        if not match:
            raise RegistryError(f"{text}: not an OCI reference; write oci://REGISTRY/REPO:TAG")
        ref = match["digest"] or match["tag"] or "latest"
        return cls(match["registry"], match["repo"], ref)

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"oci://{self.registry}/{self.repo}{sep}{self.reference}"


def plain_http(registry: str) -> bool:
    """Loopback registries, and those named in EDGEPIPE_REGISTRY_PLAIN_HTTP, are spoken to over http."""
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0] + "]"
    named = {h.strip() for h in os.environ.get("EDGEPIPE_REGISTRY_PLAIN_HTTP", "").split(",") if h.strip()}
    return host in ("localhost", "127.0.0.1", "[::1]") or registry in named or host in named


def docker_credentials(registry: str) -> tuple[str, str] | None:
    """(user, password) for ``registry`` from the Docker config's ``auths``, or None."""
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuthError(f"{folder}/config.json: unreadable Docker config ({exc})") from None
    auths = config.get("auths") if isinstance(config, dict) else None
    for key, entry in (auths or {}).items():
        if urllib.parse.urlsplit(key if "//" in key else f"//{key}").netloc != registry:
            continue
        if isinstance(entry, dict) and entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
            return user, password
        if isinstance(entry, dict) and entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class Client:
    """One repository of one registry, authenticated on the first 401."""

    def __init__(self, ref: Reference, credentials: tuple[str, str] | None = None) -> None:
        self.ref = ref
        self.base = f"{'http' if plain_http(ref.registry) else 'https'}://{ref.registry}"
        self.credentials = credentials if credentials is not None else docker_credentials(ref.registry)
        self._authorization: str | None = None

    def _open(self, method: str, path: str, headers: dict[str, str]) -> Any:
        url = path if "://" in path else f"{self.base}{path}"
        for attempt in range(2):
            request = urllib.request.Request(url, method=method, headers=dict(headers))
            if self._authorization:
                request.add_header("Authorization", self._authorization)
            try:
                return urllib.request.urlopen(request, timeout=TIMEOUT)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 0:
                    self._authenticate(exc.headers.get("WWW-Authenticate", ""))
                    continue
                if exc.code in (401, 403):
                    raise AuthError(
                        f"{self.ref.registry}: credentials refused for {self.ref.repo} (HTTP {exc.code}); "
                        "log in with `docker login` or set DOCKER_CONFIG"
                    ) from None
                raise
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise RegistryError(f"{self.ref.registry}: cannot reach the registry ({reason})") from None
        raise AssertionError("unreachable")

    def _authenticate(self, header: str) -> None:
        scheme, params = _challenge(header)
        if self.credentials is None and scheme != "bearer":
            raise AuthError(
                f"{self.ref.registry}: asks for credentials and the Docker config has none for it; "
                "`docker login` or set DOCKER_CONFIG"
            )
        basic = None
        if self.credentials is not None:
            basic = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        if scheme == "basic":
            self._authorization = basic
            return
        if scheme != "bearer" or "realm" not in params:
            raise AuthError(f"{self.ref.registry}: unsupported authentication {header!r}")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.ref.repo}:pull")
        request = urllib.request.Request(f"{params['realm']}?{urllib.parse.urlencode(query)}")
        if basic:
            request.add_header("Authorization", basic)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                token = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AuthError(f"{self.ref.registry}: token service refused the credentials (HTTP {exc.code})") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RegistryError(f"{params['realm']}: no token ({exc})") from None
        self._authorization = f"Bearer {token.get('token') or token.get('access_token')}"

    def manifest(self, reference: str, accept: str = f"{MANIFEST}, {INDEX}") -> tuple[dict[str, Any], str]:
        """The manifest (or index) ``reference`` names and its digest; checked when a digest names it."""
        path = f"/v2/{self.ref.repo}/manifests/{reference}"
        try:
            with self._open("GET", path, {"Accept": accept}) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise RegistryError(f"{self.ref.registry}/{self.ref.repo}: no manifest {reference}") from None
            raise RegistryError(f"{self.ref.registry}: HTTP {exc.code} for manifest {reference}") from None
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise DigestError(f"{self.ref.registry}: manifest {reference} arrived with digest {digest}")
        try:
            data = json.loads(body)
        except ValueError:
            raise RegistryError(f"{self.ref.registry}: manifest {reference} is not JSON") from None
        return data, digest

    def blob(self, descriptor: dict[str, Any], dest: Path) -> None:
        """Write the blob to ``dest``; RegistryError (and nothing at ``dest``) unless its sha256 and size match."""
        digest, size = str(descriptor.get("digest")), descriptor.get("size")
        if not _DIGEST.match(digest):
            raise RegistryError(f"{self.ref}: unsupported digest {digest!r}")
        hasher, written = hashlib.sha256(), 0
        try:
            with self._open("GET", f"/v2/{self.ref.repo}/blobs/{digest}", {}) as response, open(dest, "wb") as out:
                while chunk := response.read(_CHUNK):
                    hasher.update(chunk)
                    written += len(chunk)
                    if isinstance(size, int) and written > size:  # no more than the manifest said
                        raise DigestError(f"{self.ref}: blob {digest} is longer than its {size} bytes")
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            dest.unlink(missing_ok=True)
            raise RegistryError(f"{self.ref.registry}: HTTP {exc.code} for blob {digest}") from None
        except (OSError, RegistryError) as exc:
            dest.unlink(missing_ok=True)
            if isinstance(exc, RegistryError):
                raise
            raise RegistryError(f"{self.ref.registry}: blob {digest} cut off ({exc})") from None
        if "sha256:" + hasher.hexdigest() != digest or (size is not None and written != size):
            dest.unlink(missing_ok=True)
            raise DigestError(
                f"{self.ref}: blob {digest} does not match its digest (got sha256:{hasher.hexdigest()}, "
                f"{written} bytes): the registry's copy is corrupt or was tampered with"
            )

    def blob_bytes(self, descriptor: dict[str, Any], scratch: Path) -> bytes:
        path = scratch / descriptor["digest"].replace(":", "-")
        self.blob(descriptor, path)
        try:
            return path.read_bytes()
        finally:
            path.unlink()

    def referrers(self, digest: str) -> list[dict[str, Any]]:
        """Descriptors of the manifests whose ``subject`` is ``digest``: the Referrers API, or the
        ``sha256-<hex>`` tag that registries without it keep (OCI distribution spec 1.1)."""
        try:
            with self._open("GET", f"/v2/{self.ref.repo}/referrers/{digest}", {"Accept": INDEX}) as response:
                if response.headers.get_content_type() == INDEX:
                    return list(json.loads(response.read()).get("manifests", []))
        except urllib.error.HTTPError as exc:
            if exc.code not in (404, 405, 400):
                raise RegistryError(f"{self.ref.registry}: HTTP {exc.code} for referrers of {digest}") from None
        try:
            index, _ = self.manifest(digest.replace(":", "-"), INDEX)
        except RegistryError as exc:
            if "no manifest" in str(exc):
                return []
            raise
        return list(index.get("manifests", []))


def safe_path(path: str) -> bool:
    """A relative POSIX path that stays inside its folder."""
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and "\\" not in path and all(p not in ("", ".", "..") for p in parts)
