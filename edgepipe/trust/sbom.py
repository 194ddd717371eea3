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

SBOM = "sbom.cdx.json"
# The namespace of the serial number, a uuid5 of the document itself.
_NAMESPACE = uuid.UUID("6f0c1f9e-5b0e-4c36-9a8e-2a3c1b7e0d16")
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)-")


def _license(source: Path) -> str | None:
    """The model's license: config.json's "license", else the model card's front matter."""
    import yaml

    try:
        config = json.loads((source / "config.json").read_text(encoding="utf-8"))
        if isinstance(config, dict) and isinstance(config.get("license"), str):
            return str(config["license"])
    except (OSError, ValueError):
        pass
    try:
        card = (source / "README.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", card, re.S)
    if not match:
        return None
    try:
        front = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    found = front.get("license") if isinstance(front, dict) else None
    return found if isinstance(found, str) and found else None


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


def document(dest: Path, manifest: dict[str, Any], source: Path) -> str:
    """The SBOM of the bundle being written in ``dest`` (model, wheels) from its manifest."""
    from cyclonedx.contrib.license.factories import LicenseFactory
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    from ..stages.bundle import source_date_epoch

    described, profile = manifest["model"]["source"], manifest["profile"]
    kept = kept_matmuls(manifest)
    license_name = _license(source)
    model = Component(
        type=ComponentType.MACHINE_LEARNING_MODEL,
        bom_ref="model",
        name=described["name"],
        description=f"{described['name']} ({manifest['task']}), quantized by edgepipe with "
        f"profile {profile['name']} for {manifest['target']['name']}",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=manifest["model"]["sha256"])],
        licenses=[LicenseFactory().make_from_string(license_name)] if license_name else None,
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
    if described["kind"] == "package":
        model.purl = PackageURL("pypi", name=described["ref"].lower())
    elif described["kind"] == "hub":  # purl's huggingface type: the repo pinned to its commit
        org, repo = described["repo_id"].split("/")
        model.purl = PackageURL("huggingface", org, repo, described["commit"])
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
    for component in (model, *requirements, *wheels):
        bom.components.add(component)
    bom.register_dependency(bundle, [model, *requirements])
    bom.serial_number = uuid.UUID(int=0)  # Bom() draws a random one
    bom.serial_number = uuid.uuid5(_NAMESPACE, JsonV1Dot6(bom).output_as_string(indent=2))
    return JsonV1Dot6(bom).output_as_string(indent=2) + "\n"


def write(dest: Path, manifest: dict[str, Any], source: Path) -> None:
    (dest / SBOM).write_text(document(dest, manifest, source), encoding="utf-8")


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
