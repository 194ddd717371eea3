"""``edgepipe push``: a bundle as an OCI artifact in CNCF ModelPack v1's layout, its SBOM and
signature attached as referrers. oras-py uploads the blobs and manifests and speaks token auth; the
ModelPack manifest, the referrers and the tag-schema fallback index are written here."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import RegistryError
from ..runtime import oci
from ..runtime.integrity import MANIFEST, SIGNATURE, bundle_files, read_manifest, verify_dir

WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
DOC = "application/vnd.cncf.model.doc.v1.raw"
CODE = "application/vnd.cncf.model.code.v1.raw"
EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
         "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}  # fmt: skip
SBOM_FILE = "sbom.cdx.json"


def _media_type(rel: str) -> str:
    if rel.startswith("model/"):
        return WEIGHT
    if rel.startswith("tokenizer/") or rel == "runtime.json":
        return WEIGHT_CONFIG
    if rel.endswith((".py", ".whl")) or rel == "requirements.txt":
        return CODE
    return DOC


def canonical_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media_type: str, body: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(body).hexdigest(),
            "size": len(body), **extra}  # fmt: skip


def _epoch() -> int:
    """The build's SOURCE_DATE_EPOCH (as stages/bundle.py reads it), so that a push is reproducible."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else 315532800


def model_config(manifest: dict[str, Any], layers: list[dict[str, Any]]) -> dict[str, Any]:
    """ModelPack's config: the SPDX licences, format, precision and quantization of the bundle."""
    profile = manifest.get("profile") or {}
    licence = (manifest.get("licence") or {}).get("expression")
    return {
        "descriptor": {
            "name": manifest["name"],
            "family": str(manifest["model"]["source"].get("model_type")),
            "createdAt": datetime.fromtimestamp(_epoch(), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "licenses": [licence] if licence else [],
            "version": manifest["versions"]["edgepipe"],
        },
        "config": {
            "architecture": "transformer",
            "format": "onnx",
            "precision": str(profile.get("weight_type") or profile.get("method") or "fp32"),
            "quantization": str(profile.get("method") or "none"),
        },
        "modelfs": {"type": "layers", "diffIds": [layer["digest"] for layer in layers]},
    }


@dataclass(frozen=True)
class Pushed:
    reference: str
    digest: str
    layers: int
    referrers: dict[str, str]  # artifactType -> manifest digest
    referrers_api: bool  # False: attached with the sha256-<hex> tag


class _Uploader:
    """oras-py's registry client for one repository, without its minutes of retries, and with the
    auth backend the registry asks for (oras' token backend does not answer a Basic challenge)."""

    def __init__(self, ref: oci.Reference) -> None:
        import oras.provider
        import requests

        class Registry(oras.provider.Registry):
            do_request = oras.provider.Registry.do_request.__wrapped__

        self.ref = ref
        insecure = oci.plain_http(ref.registry)
        self.base = f"{'http' if insecure else 'https'}://{ref.registry}/v2/{ref.repo}"
        try:
            challenge = requests.get(f"{'http' if insecure else 'https'}://{ref.registry}/v2/", timeout=30)
        except requests.RequestException as exc:
            raise RegistryError(f"{ref.registry}: cannot reach the registry ({type(exc).__name__})") from None
        header = challenge.headers.get("Www-Authenticate", "")
        self.registry = Registry(hostname=ref.registry, insecure=insecure,
                                 auth_backend="basic" if header.lower().startswith("basic") else "token")  # fmt: skip
        try:
            credentials = oci.docker_credentials(ref.registry)
        except oci.RegistryError as exc:
            raise RegistryError(str(exc)) from None
        if credentials:
            self.registry.auth.set_basic_auth(*credentials)
        if header.lower().startswith("bearer"):
            self._push_token(header)
        self.container = self.registry.get_container(f"{ref.registry}/{ref.repo}:{ref.reference}")

    def _push_token(self, header: str) -> None:
        """Ask for a pull+push token up front: oras-py 0.2 keeps the token of its first request (a HEAD,
        scope pull) and sends it again when an upload is refused for want of push."""
        import requests
        from oras.auth.utils import parse_auth_header

        challenge = parse_auth_header(header)
        challenge.scope = f"repository:{self.ref.repo}:pull,push"
        try:
            token = self.registry.auth.request_token(challenge)
        except requests.RequestException as exc:
            raise RegistryError(f"{challenge.realm}: no token ({type(exc).__name__})") from None
        if not token:
            raise RegistryError(
                f"{self.ref.registry}: credentials refused for {self.ref.repo} by its token service; "
                "log in with `docker login` or set DOCKER_CONFIG"
            )
        self.registry.auth.set_token_auth(token)

    def _checked(self, response: Any, what: str) -> Any:
        if response.status_code in (401, 403):
            raise RegistryError(
                f"{self.ref.registry}: credentials refused for {self.ref.repo} (HTTP {response.status_code}); "
                "log in with `docker login` or set DOCKER_CONFIG"
            )
        if response.status_code not in (200, 201, 202):
            raise RegistryError(
                f"{self.ref.registry}: {what} refused (HTTP {response.status_code}: {response.text[:200]})"
            )
        return response

    def _call(self, fn: Any, *args: Any, what: str, **kwargs: Any) -> Any:
        import requests

        try:
            return self._checked(fn(*args, **kwargs), what)
        except requests.RequestException as exc:
            raise RegistryError(
                f"{self.ref.registry}: lost the registry during {what} ({type(exc).__name__})"
            ) from None
        except ValueError as exc:  # oras: "Cannot respond to request for authentication."
            raise RegistryError(
                f"{self.ref.registry}: credentials refused for {self.ref.repo} ({exc}); "
                "log in with `docker login` or set DOCKER_CONFIG"
            ) from None

    def blob(self, path: Path, layer: dict[str, Any]) -> None:
        self._call(self.registry.upload_blob, str(path), self.container, layer, what=f"upload of {path.name}")

    def manifest(self, body: bytes, media_type: str, reference: str) -> None:
        self._call(self.registry.do_request, f"{self.base}/manifests/{reference}", "PUT", data=body,
                   headers={"Content-Type": media_type}, what=f"manifest {reference}")  # fmt: skip

    def get(self, path: str, accept: str) -> Any:
        import requests

        try:
            return self.registry.do_request(f"{self.base}/{path}", "GET", headers={"Accept": accept})
        except requests.RequestException as exc:
            raise RegistryError(f"{self.ref.registry}: lost the registry ({type(exc).__name__})") from None


def _attach(up: _Uploader, scratch: Path, subject: dict[str, Any], artifact: str, path: Path) -> str:
    """Push ``path`` as an artifact whose ``subject`` is the model's manifest; its digest."""
    empty = scratch / "empty.json"
    empty.write_bytes(b"{}")
    up.blob(empty, EMPTY)
    body = path.read_bytes()
    layer = descriptor(artifact, body, annotations={"org.opencontainers.image.title": path.name})
    up.blob(path, layer)
    manifest = {"schemaVersion": 2, "mediaType": oci.MANIFEST, "artifactType": artifact, "config": EMPTY,
                "layers": [layer], "subject": subject}  # fmt: skip
    raw = canonical_json(manifest)
    digest = descriptor(oci.MANIFEST, raw)["digest"]
    up.manifest(raw, oci.MANIFEST, digest)
    return digest


def push(root: Path, target: str) -> Pushed:
    """Push the bundle directory ``root`` to ``target`` (oci://REGISTRY/REPO:TAG)."""
    ref = oci.Reference.parse(target) if target.startswith("oci://") else None
    if ref is None or ref.reference.startswith("sha256:"):
        raise RegistryError(f"{target}: push to a tag, oci://REGISTRY/REPO:TAG")
    try:
        manifest = read_manifest(root)
    except ValueError as exc:
        raise RegistryError(str(exc)) from None
    problems = verify_dir(root)
    if problems:
        raise RegistryError(f"{root}: does not match its manifest ({problems[0]}); rebuild it before pushing")
    up = _Uploader(ref)
    files = {**bundle_files(root), MANIFEST: root / MANIFEST}
    layers = []
    for rel in sorted(files):
        body_digest = "sha256:" + manifest["files"][rel] if rel != MANIFEST else None
        layer = descriptor(_media_type(rel), b"", annotations={oci.FILEPATH: rel})
        layer["size"] = files[rel].stat().st_size
        layer["digest"] = body_digest or "sha256:" + hashlib.sha256(files[rel].read_bytes()).hexdigest()
        up.blob(files[rel], layer)
        layers.append(layer)
    with tempfile.TemporaryDirectory(prefix="edgepipe-push-") as tmp:
        scratch = Path(tmp)
        config = canonical_json(model_config(manifest, layers))
        (scratch / "config.json").write_bytes(config)
        config_descriptor = descriptor(oci.MODEL_CONFIG, config)
        up.blob(scratch / "config.json", config_descriptor)
        image = {"schemaVersion": 2, "mediaType": oci.MANIFEST, "artifactType": oci.MODEL_ARTIFACT,
                 "config": config_descriptor, "layers": layers,
                 "annotations": {"org.opencontainers.image.title": manifest["name"]}}  # fmt: skip
        raw = canonical_json(image)
        subject = descriptor(oci.MANIFEST, raw)
        up.manifest(raw, oci.MANIFEST, ref.reference)
        attached = {}
        if (root / SBOM_FILE).is_file():
            attached[oci.SBOM_ARTIFACT] = _attach(up, scratch, subject, oci.SBOM_ARTIFACT, root / SBOM_FILE)
        if (root / SIGNATURE).is_file():
            attached[oci.SIGNATURE_ARTIFACT] = _attach(up, scratch, subject, oci.SIGNATURE_ARTIFACT, root / SIGNATURE)
        api = _index_referrers(up, subject["digest"], attached, scratch)
    return Pushed(str(ref), subject["digest"], len(layers), attached, api)


def _index_referrers(up: _Uploader, subject: str, attached: dict[str, str], scratch: Path) -> bool:
    """True when the registry lists referrers itself; else write (merge) the ``sha256-<hex>`` tag's index."""
    if not attached:
        return True
    response = up.get(f"referrers/{subject}", oci.INDEX)
    if response.status_code == 200 and response.headers.get("Content-Type", "").startswith(oci.INDEX):
        return True
    tag = subject.replace(":", "-")
    existing = up.get(f"manifests/{tag}", oci.INDEX)
    known = existing.json().get("manifests", []) if existing.status_code == 200 else []
    entries = {m["digest"]: m for m in known if isinstance(m, dict) and "digest" in m}
    for artifact, digest in attached.items():
        size = up.get(f"manifests/{digest}", oci.MANIFEST)
        entries[digest] = {"mediaType": oci.MANIFEST, "digest": digest, "size": len(size.content),
                           "artifactType": artifact}  # fmt: skip
    index = {
        "schemaVersion": 2,
        "mediaType": oci.INDEX,
        "manifests": sorted(entries.values(), key=lambda m: m["digest"]),
    }
    up.manifest(canonical_json(index), oci.INDEX, tag)
    return False
