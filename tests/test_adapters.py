"""`edgepipe build --model BASE --adapter LORA`: PEFT LoRA adapters made here (random non-zero A and
B on tiny random models) merged in fp32, the bundle checked against PEFT's own unmerged forward."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from tests.decoders import make_tiny_decoder
from tests.scoring_models import make_tiny_classifier
from tests.test_sbom import validate

DECODER_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ("The kitchen lights are", "turn on the lights", "12 + 30 =")


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def _auto(task_type: str):
    import transformers

    return getattr(
        transformers, "AutoModelForCausalLM" if task_type == "CAUSAL_LM" else "AutoModelForSequenceClassification"
    )


def make_lora(base: Path, dest: Path, seed: int = 1, task_type: str = "CAUSAL_LM", **options) -> Path:
    """A PEFT LoRA adapter of ``base`` with random, non-zero A and B (PEFT starts B at zero, which
    would make the adapter a no-op and every comparison vacuous)."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = options.pop("target_modules", DECODER_LAYERS)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type=task_type, **options)
    peft_model = get_peft_model(_auto(task_type).from_pretrained(str(base)), config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "classifier" in name:
                param.normal_(0.0, 0.25)
    peft_model.save_pretrained(str(dest))
    return dest


def unmerged(base: Path, adapter: Path, task_type: str = "CAUSAL_LM"):
    """PEFT's model with the adapter applied on the fly, not merged: the reference."""
    from peft import PeftModel

    return PeftModel.from_pretrained(_auto(task_type).from_pretrained(str(base)), str(adapter)).eval()


def greedy(model, ids: list[int], n: int = 16) -> list[int]:
    import torch

    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=n, min_new_tokens=n, do_sample=False,
        )  # fmt: skip
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_tiny_decoder("llama", tmp_path_factory.mktemp("base") / "tiny-llama")


@pytest.fixture(scope="module")
def rslora(llama, tmp_path_factory) -> Path:
    adapter = make_lora(llama, tmp_path_factory.mktemp("adapters") / "rs-lora", use_rslora=True)
    # Its own terms, beside its base's (which declares none): the card's front matter and the text.
    (adapter / "README.md").write_text("---\nlicense: mit\nlibrary_name: peft\n---\n# rs-lora\n")
    (adapter / "LICENSE").write_text("MIT License\n\nCopyright (c) 2026 the adapter's authors\n")
    return adapter


@pytest.fixture(scope="module")
def merged_build(llama, rslora, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist")
    result = cli("build", "--model", str(llama), "--adapter", str(rslora), "--target", "laptop-avx2",
                 "--profile", "fp32", "--no-bench", "--out", str(out), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_merged_fp32_bundle_generates_the_adapted_models_greedy_tokens(merged_build, llama, rslora):
    import torch
    from transformers import AutoModelForCausalLM

    from edgepipe.runtime.generator import Generator

    generator = Generator.from_bundle(Path(merged_build["bundle_dir"]))
    # EOS off on both sides so that neither stops early (as in test_generation_build).
    generator.config = dataclasses.replace(generator.config, eos_token_ids=())
    generator.eos = frozenset()
    adapted = unmerged(llama, rslora)
    base = AutoModelForCausalLM.from_pretrained(str(llama)).eval()
    differs = 0
    for prompt in PROMPTS:
        ids = generator.encode(prompt)
        got = generator.generate(ids, max_new_tokens=16).token_ids
        assert got == greedy(adapted, ids), prompt
        differs += got != greedy(base, ids)
    assert differs >= 1  # the adapter changes what the model says: the comparison is not vacuous
    with torch.inference_mode():  # and the bundle's logits are the adapted model's, not the base's
        ids = generator.encode(PROMPTS[0])
        ours = generator.logits(ids)
        theirs = adapted(torch.tensor([ids])).logits[0].numpy()
    assert abs(ours[-1] - theirs[-1]).max() < 1e-3


def test_manifest_and_sbom_record_base_and_adapter(merged_build, llama, rslora):
    from edgepipe.sources import directory_digest

    bundle = Path(merged_build["bundle_dir"])
    assert bundle.name == "tiny-llama-rs-lora-laptop-avx2"
    assert cli("verify", str(bundle)).exit_code == 0
    source = json.loads((bundle / "manifest.json").read_text())["model"]["source"]
    assert source["ref"] == llama.name and source["base_digest"] == f"sha256:{directory_digest(llama)}"
    adapter = source["adapter"]
    assert adapter["ref"] == rslora.name and adapter["digest"] == f"sha256:{directory_digest(rslora)}"
    assert (adapter["rank"], adapter["alpha"], adapter["rslora"], adapter["dora"]) == (4, 8.0, True, False)
    assert adapter["scaling"] == 8.0 / 4**0.5  # rsLoRA: alpha / sqrt(r), not alpha / r
    assert adapter["target_modules"] == sorted(DECODER_LAYERS)
    assert source["digest"] not in (source["base_digest"], adapter["digest"])
    sbom = json.loads((bundle / "sbom.cdx.json").read_text())
    (component,) = [c for c in sbom["components"] if c["bom-ref"] == "adapter"]
    assert component["hashes"][0]["content"] == adapter["weights_sha256"]
    props = {p["name"]: p["value"] for p in component["properties"]}
    assert (
        json.loads(props["edgepipe:adapter.rank"]) == 4
        and props["edgepipe:source.base_digest"] == source["base_digest"]
    )
    # The adapter's licence sits beside its base's: in the bundle, the manifest and the SBOM.
    licence = json.loads((bundle / "manifest.json").read_text())["licence"]
    assert licence["adapter"]["expression"] == "MIT" and licence["adapter"]["files"] == ["licenses/adapter/LICENSE"]
    assert (bundle / "licenses" / "adapter" / "LICENSE").read_text().startswith("MIT License")
    assert component["licenses"][0]["license"]["id"] == "MIT"
    validate((bundle / "sbom.cdx.json").read_text())  # still CycloneDX 1.6 with the adapter's licence
    assert {"ref": "model", "dependsOn": ["adapter"]} in sbom["dependencies"]


def test_rslora_merge_scales_by_alpha_over_sqrt_rank(llama, rslora, tmp_path):
    """The merged weights, against W + alpha / sqrt(r) * B @ A computed here from the files."""
    from safetensors.numpy import load_file

    from edgepipe.sources import adapter as adapters

    found = adapters.locate(str(rslora))
    adapters.merge(llama, found, tmp_path)
    base, merged = load_file(llama / "model.safetensors"), load_file(tmp_path / "model.safetensors")
    lora = load_file(rslora / adapters.WEIGHTS)
    name = "model.layers.1.mlp.down_proj"
    a, b = lora[f"base_model.model.{name}.lora_A.weight"], lora[f"base_model.model.{name}.lora_B.weight"]
    expected = base[f"{name}.weight"] + 8.0 / 2.0 * (b @ a)
    assert abs(merged[f"{name}.weight"] - expected).max() < 1e-5
    assert abs(merged[f"{name}.weight"] - base[f"{name}.weight"]).max() > 0.1
    assert (tmp_path / "tokenizer.json").read_bytes() == (llama / "tokenizer.json").read_bytes()


def test_dora_merge_computes_what_peft_computes_unmerged(llama, tmp_path):
    import torch

    from edgepipe.sources import adapter as adapters

    dora = make_lora(llama, tmp_path / "dora", use_dora=True, target_modules=["q_proj", "v_proj", "down_proj"])
    adapters.merge(llama, adapters.locate(str(dora)), tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.inference_mode():
        want, got = unmerged(llama, dora)(ids).logits, merged(ids).logits
    assert (want - got).abs().max() < 1e-4 and adapters.locate(str(dora)).describe()["dora"] is True


def test_adapter_of_another_base_fails_on_one_line_and_leaves_nothing(llama, tmp_path):
    other = make_tiny_decoder("llama", tmp_path / "wide-llama", hidden=96)
    adapter = make_lora(other, tmp_path / "wide-lora", target_modules=["q_proj", "v_proj"])
    out = tmp_path / "dist"
    result = cli("build", "--model", str(llama), "--adapter", str(adapter), "--target", "laptop-avx2",
                 "--profile", "fp32", "--no-bench", "--out", str(out))  # fmt: skip
    assert result.exit_code == 4, result.output
    message = result.output.strip().splitlines()[-1]
    assert "does not fit the base model" in message and "model.layers.0.self_attn.q_proj" in message
    assert "96" in message and "64" in message
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize(
    "change, words",
    [
        ({"peft_type": "IA3"}, "PEFT adapter type 'IA3' is not supported"),
        ({"task_type": "SEQ_2_SEQ_LM"}, "task type 'SEQ_2_SEQ_LM' is not supported"),
        ({"layer_replication": [[0, 2], [1, 2]]}, "layer replication"),
    ],
)
def test_unsupported_adapters_are_refused_by_name(llama, rslora, tmp_path, change, words):
    import shutil

    copy = Path(shutil.copytree(rslora, tmp_path / "changed"))
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, **change}))
    result = cli("build", "--model", str(llama), "--adapter", str(copy), "--target", "laptop-avx2",
                 "--profile", "fp32", "--no-bench", "--out", str(tmp_path / "dist"))  # fmt: skip
    assert result.exit_code == 4 and words in result.output, result.output


def test_a_model_directory_passed_as_adapter_says_so(llama, tmp_path):
    result = cli("build", "--model", str(llama), "--adapter", str(llama), "--target", "laptop-avx2",
                 "--profile", "fp32", "--out", str(tmp_path / "dist"))  # fmt: skip
    assert result.exit_code == 4 and "not a PEFT adapter directory; pass the model as --model" in result.output


def test_seq_cls_adapter_builds_a_classifier_scoring_like_peft(tmp_path):
    """A SEQ_CLS LoRA (its head saved whole) on a BERT classifier: the fp32 bundle's logits are
    PEFT's unmerged model's."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from edgepipe.runtime.scorer import Scorer

    base = make_tiny_classifier(tmp_path / "tiny-intents")
    adapter = make_lora(
        base, tmp_path / "intents-lora", task_type="SEQ_CLS", target_modules=["query", "value", "dense"]
    )
    result = cli("build", "--model", str(base), "--adapter", str(adapter), "--target", "laptop-avx2",
                 "--profile", "fp32", "--no-bench", "--out", str(tmp_path / "dist"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = Path(json.loads(result.stdout.strip().splitlines()[-1])["bundle_dir"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task"] == "text-classification"
    assert manifest["model"]["source"]["adapter"]["task_type"] == "SEQ_CLS"
    texts = ["turn on the lights", "play some jazz", "will it rain tomorrow?"]
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    with torch.inference_mode():
        want = unmerged(base, adapter, "SEQ_CLS")(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    scorer = Scorer.from_bundle(bundle)
    got = scorer.logits(texts)
    assert np.abs(got - want.numpy()).max() < 1e-4


def test_adapter_hub_id_resolves_through_the_hub_cache(llama, rslora, tmp_path, monkeypatch):
    from edgepipe.sources import adapter as adapters
    from tests.hub_cache import add_snapshot, commit_of, model_files

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(variable, raising=False)
    commit = commit_of("rs-lora")
    add_snapshot(tmp_path / "hf" / "hub", "someone/rs-lora", model_files(rslora), commit)
    found = adapters.locate("someone/rs-lora")
    assert found.ref == f"someone/rs-lora@{commit}" and found.describe()["commit"] == commit
    assert found.digest == adapters.locate(str(rslora)).digest
    missing = cli("build", "--model", str(llama), "--adapter", "someone/absent-lora", "--target", "laptop-avx2",
                  "--profile", "fp32", "--out", str(tmp_path / "dist"))  # fmt: skip
    assert missing.exit_code == 4 and "not in the Hugging Face cache" in missing.output


def test_gpt2_conv1d_lora_merged_bundle_is_token_exact(tmp_path):
    """GPT-2's transposed Conv1D layers (PEFT's fan_in_fan_out): merged and built in fp32, the
    bundle generates PEFT's unmerged greedy tokens."""
    from edgepipe.runtime.generator import Generator

    base = make_tiny_decoder("gpt2", tmp_path / "tiny-gpt2")
    adapter = make_lora(base, tmp_path / "gpt2-lora", target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
    result = cli("build", "--model", str(base), "--adapter", str(adapter), "--target", "laptop-avx2",
                 "--profile", "fp32", "--no-bench", "--out", str(tmp_path / "dist"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    generator = Generator.from_bundle(Path(json.loads(result.stdout.strip().splitlines()[-1])["bundle_dir"]))
    generator.config = dataclasses.replace(generator.config, eos_token_ids=())
    generator.eos = frozenset()
    adapted = unmerged(base, adapter)
    for prompt in PROMPTS:
        ids = generator.encode(prompt)
        assert generator.generate(ids, max_new_tokens=16).token_ids == greedy(adapted, ids), prompt


def test_adapter_on_a_gguf_base(llama, rslora, tmp_path, monkeypatch):
    """The base as a user holds it (a GGUF of the same model): the adapter merges into its converted
    weights, and the fp32 bundle generates PEFT's unmerged tokens on the Hugging Face base."""
    from edgepipe.runtime.generator import Generator
    from tests.gguf_files import write_llama_gguf

    monkeypatch.setenv("EDGEPIPE_CACHE_DIR", str(tmp_path / "cache"))
    gguf = write_llama_gguf(llama, tmp_path / "tiny-llama.gguf")
    result = cli("build", "--model", str(gguf), "--adapter", str(rslora), "--target", "laptop-avx2",
                 "--profile", "fp32", "--no-bench", "--out", str(tmp_path / "dist"), "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    bundle = Path(json.loads(result.stdout.strip().splitlines()[-1])["bundle_dir"])
    source = json.loads((bundle / "manifest.json").read_text())["model"]["source"]
    assert source["kind"] == "gguf" and source["format"] == "gguf" and source["ref"] == gguf.name
    assert source["adapter"]["rank"] == 4
    generator = Generator.from_bundle(bundle)
    generator.config = dataclasses.replace(generator.config, eos_token_ids=())
    generator.eos = frozenset()
    ids = generator.encode(PROMPTS[0])
    assert generator.generate(ids, max_new_tokens=16).token_ids == greedy(unmerged(llama, rslora), ids)
