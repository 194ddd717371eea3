"""Licences: resolved from the card, config, GGUF fields and licence files; the policy gate before
any export; the licence files, README obligations and SBOM (CycloneDX 1.6, modelCard) in the bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.catalog.config import LicencePolicy
from edgepipe.cli import main
from edgepipe.errors import LicenceError
from edgepipe.runtime.integrity import sha256_file
from edgepipe.trust import licence_policy
from edgepipe.trust.licence import canonical, resolve

LLAMA_TEXT = "LLAMA 3.2 COMMUNITY LICENSE AGREEMENT\nLlama 3.2 Version Release Date: September 25, 2024\n"
POLICY = "allow: [Apache-2.0, MIT]\n"


def card(path: Path, front: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text(f"---\n{front}---\n# model\n")
    return path


def llama_model(root: Path) -> Path:
    card(root, "license: llama3.2\ndatasets:\n- wikitext\n- tiny-corpus\n")
    (root / "LICENSE.txt").write_text(LLAMA_TEXT)
    (root / "USE_POLICY.md").write_text("# Llama 3.2 Acceptable Use Policy\n")
    return root


def test_ids_from_spdx_hugging_face_and_scancode():
    assert canonical("apache-2.0") == "Apache-2.0"
    assert canonical("mit OR apache-2.0") == "MIT OR Apache-2.0"
    assert canonical("llama3.2") == "LicenseRef-scancode-llama-3.2-license-2024"
    assert canonical("gemma") == "LicenseRef-scancode-gemma-tou-2024-04-01"
    assert canonical("bigscience-bloom-rail-1.0") == "LicenseRef-scancode-bigscience-rail-1.0"
    assert canonical("deepseek") == "LicenseRef-scancode-deepseek-la-1.0"
    assert canonical("my licence 2") == "LicenseRef-edgepipe-my-licence-2"


def test_licence_variants(tmp_path):
    spdx = resolve(card(tmp_path / "spdx", "license: apache-2.0\n"))
    assert (spdx.expression, spdx.declared, spdx.url) == (
        "Apache-2.0",
        "apache-2.0",
        "https://spdx.org/licenses/Apache-2.0.html",
    )
    llama = resolve(llama_model(tmp_path / "llama"))
    assert llama.expression == "LicenseRef-scancode-llama-3.2-license-2024" and llama.where == "model card"
    assert [p.name for p in llama.files] == ["LICENSE.txt", "USE_POLICY.md"]
    assert any('"Built with Llama"' in o and "700 million" in o for o in llama.obligations())
    other = resolve(
        card(
            tmp_path / "other",
            "license: other\nlicense_name: acme-model-licence\nlicense_link: https://acme.example/LICENSE\n",
        )
    )
    assert (other.expression, other.url) == ("LicenseRef-edgepipe-acme-model-licence", "https://acme.example/LICENSE")
    assert resolve(card(tmp_path / "none", "tags: [x]\n")).expression is None
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "LICENSE").write_text(LLAMA_TEXT)  # no card: the text's first words name it
    assert resolve(bare).expression == "LicenseRef-scancode-llama-3.2-license-2024"
    gguf = resolve(tmp_path / "none", {"general.license": "mit"})
    assert (gguf.expression, gguf.where) == ("MIT", "GGUF metadata")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({"license": "bsd-3-clause"}))
    assert resolve(tmp_path / "cfg").expression == "BSD-3-Clause"


def test_policy_rules(tmp_path):
    llama = resolve(llama_model(tmp_path / "llama"))
    policy = LicencePolicy(allow=["Apache-2.0", "MIT"])
    with pytest.raises(LicenceError) as refused:
        licence_policy.check(llama, policy, "policy.yaml")
    assert refused.value.exit_code == 10
    assert str(refused.value) == (
        "the model's licence LicenseRef-scancode-llama-3.2-license-2024 (declared 'llama3.2' in the model card) "
        "is not in the policy's allow list (policy.yaml); pass --accept-license llama3.2 to accept it"
    )
    licence_policy.check(llama, policy, "policy.yaml", ["llama3.2"])  # accepted: passes
    licence_policy.check(llama, policy, "policy.yaml", ["LicenseRef-scancode-llama-3.2-license-2024"])
    denied = LicencePolicy(deny=["llama3.2"])
    with pytest.raises(LicenceError, match=r"is denied by the policy \(deny\) \(p\)$"):
        licence_policy.check(llama, denied, "p", ["llama3.2"])
    gated = LicencePolicy(require_acceptance=["llama3.2"])
    with pytest.raises(LicenceError, match="needs acceptance"):
        licence_policy.check(llama, gated, "p")
    either = resolve(card(tmp_path / "dual", "license: gpl-3.0 OR mit\n"))
    licence_policy.check(either, policy, "p")  # one side of an OR is allowed
    with pytest.raises(LicenceError, match="declares no licence"):
        licence_policy.check(resolve(card(tmp_path / "none", "tags: []\n")), policy, "p")


@pytest.fixture(scope="session")
def llama_bundle(tiny_bert_master, profiles_dir, tmp_path_factory):
    """The tiny model under Llama 3.2's licence, refused by an Apache/MIT policy, then built with
    --accept-license (one build, shared with the fleet tests)."""
    root = tmp_path_factory.mktemp("llama")
    model = llama_model(Path(shutil.copytree(tiny_bert_master, root / "tiny-llama")))
    policy = root / "policy.yaml"
    policy.write_text(POLICY)
    out = root / "dist"
    args = ["build", "--target", "laptop-avx2", "--profile", "tiny-int8", "--profiles-dir", str(profiles_dir),
            "--model", str(model), "--out", str(out), "--no-bench", "--license-policy", str(policy)]  # fmt: skip
    refused = CliRunner().invoke(main, args)
    accepted = CliRunner().invoke(main, [*args, "--accept-license", "llama3.2"])
    return refused, accepted, out / "tiny-llama-laptop-avx2", model


def test_policy_refuses_before_export_then_accepts(llama_bundle):
    refused, accepted, bundle, _ = llama_bundle
    assert refused.exit_code == 10, refused.output
    (error,) = [line for line in refused.output.splitlines() if line.startswith("error:")]
    assert "not in the policy's allow list" in error and "export" not in refused.output
    assert accepted.exit_code == 0, accepted.output
    assert (bundle / "model" / "model.onnx").is_file()


def test_bundle_carries_licence_files_obligations_and_sbom(llama_bundle):
    from test_sbom import validate

    _, _, bundle, model = llama_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("LICENSE.txt", "USE_POLICY.md"):
        assert manifest["files"][f"licenses/{name}"] == sha256_file(model / name)
    assert manifest["licence"]["expression"] == "LicenseRef-scancode-llama-3.2-license-2024"
    assert manifest["model"]["source"]["ref"] == "tiny-llama"  # not the builder's absolute path
    readme = (bundle / "README.md").read_text()
    assert "## Licence" in readme and '"Built with Llama"' in readme and "licenses/LICENSE.txt" in readme
    text = (bundle / "sbom.cdx.json").read_text()
    validate(text)
    (component,) = [c for c in json.loads(text)["components"] if c["type"] == "machine-learning-model"]
    (licence,) = component["licenses"]
    assert licence["license"]["name"] == "LicenseRef-scancode-llama-3.2-license-2024"
    assert licence["license"]["acknowledgement"] == "declared"
    assert licence["license"]["text"]["content"] == LLAMA_TEXT
    assert licence["license"]["url"].endswith("llama-3.2-license-2024.html")
    card = component["modelCard"]
    assert card["modelParameters"]["architectureFamily"] == "bert"
    datasets = card["modelParameters"]["datasets"]
    assert datasets == [{"type": "dataset", "name": "wikitext"}, {"type": "dataset", "name": "tiny-corpus"}]
    metrics = {m["type"]: float(m["value"]) for m in card["quantitativeAnalysis"]["performanceMetrics"]}
    assert metrics["min (vs fp32)"] == manifest["accuracy"]["model"]["min"]


def test_check_shows_the_licence(llama_bundle):
    _, _, bundle, _ = llama_bundle
    result = CliRunner().invoke(main, ["check", str(bundle)])
    assert "LicenseRef-scancode-llama-3.2-license-2024" in result.output


def test_policy_in_a_target_file(tiny_bert, tmp_path, profiles_dir):
    from edgepipe.catalog import targets

    target = targets().path("laptop-avx2") if hasattr(targets(), "path") else None
    source = Path(__file__).parents[1] / "targets" / "laptop-avx2.yaml"
    text = (target or source).read_text() + "license_policy:\n  deny: [apache-2.0]\n"
    (tmp_path / "strict.yaml").write_text(text.replace("name: laptop-avx2", "name: strict"))
    card(tiny_bert, "license: apache-2.0\n")
    result = CliRunner().invoke(main, ["build", "--target", str(tmp_path / "strict.yaml"), "--profile", "tiny-int8",
                                       "--profiles-dir", str(profiles_dir), "--model", str(tiny_bert),
                                       "--out", str(tmp_path / "out")])  # fmt: skip
    assert result.exit_code == 10 and "denied by the policy (deny) (target 'strict' license_policy)" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("allow: [MIT]\npermit: [x]\n")
    result = CliRunner().invoke(main, ["build", "--target", "laptop-avx2", "--model", str(tiny_bert),
                                       "--license-policy", str(bad)])  # fmt: skip
    assert result.exit_code == 3 and "field 'permit': unknown key" in result.output


def test_a_gguf_declares_its_licence_in_its_metadata(tmp_path, monkeypatch):
    from edgepipe import sources
    from edgepipe.engine.licences import licence_of
    from tests.decoders import make_tiny_decoder
    from tests.gguf_files import write_llama_gguf

    monkeypatch.setenv("EDGEPIPE_CACHE_DIR", str(tmp_path / "cache"))
    model = make_tiny_decoder("llama", tmp_path / "tiny-llama")
    link = "https://www.llama.com/llama3_2/license/"
    path = write_llama_gguf(model, tmp_path / "tiny.gguf", licence=("llama3.2", "llama3.2", link))
    licence = licence_of(sources.resolve(str(path)))
    assert (licence.expression, licence.where, licence.url) == (canonical("llama3.2"), "GGUF metadata", link)
