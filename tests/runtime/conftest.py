"""Tiny decoders exported with optimum and laid out as text-generation bundles."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pytest

from edgepipe.runtime.integrity import MANIFEST, bundle_files, sha256_file
from edgepipe.stages.bundle import RUNTIME_MODULES
from tests.decoders import export_decoder, make_tiny_decoder

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


@dataclass(frozen=True)
class DecoderBundle:
    kind: str
    model_dir: Path  # the Hugging Face model the bundle was exported from
    root: Path  # the bundle


def assemble_bundle(model_dir: Path, onnx_model: Path, root: Path, name: str) -> Path:
    """The layout a text-generation bundle has: model/, tokenizer/, runtime.json, the runtime."""
    from edgepipe.tasks.decoder_runtime import runtime_config

    (root / "model").mkdir(parents=True)
    shutil.copy(onnx_model, root / "model" / "model.onnx")
    (root / "tokenizer").mkdir()
    for file in TOKENIZER_FILES:
        if (model_dir / file).is_file():
            shutil.copy(model_dir / file, root / "tokenizer" / file)
    config = runtime_config(model_dir, onnx_model, 1, 1, ["CPUExecutionProvider"])
    (root / "runtime.json").write_text(json.dumps(config.to_json(), indent=2))
    source = resources.files("edgepipe.runtime")
    (root / "edgepipe_runtime").mkdir()
    for module in RUNTIME_MODULES:
        (root / "edgepipe_runtime" / module).parent.mkdir(parents=True, exist_ok=True)
        (root / "edgepipe_runtime" / module).write_text(source.joinpath(module).read_text())
    (root / "__main__.py").write_text(source.joinpath("bundle_main.py").read_text())
    files = {rel: sha256_file(path) for rel, path in bundle_files(root).items()}
    manifest = {"name": name, "task": "text-generation", "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture(scope="session")
def decoder_bundle(tmp_path_factory: pytest.TempPathFactory):
    """``decoder_bundle(kind)``: that tiny decoder as a bundle, built once per session."""
    built: dict[str, DecoderBundle] = {}

    def get(kind: str) -> DecoderBundle:
        if kind not in built:
            base = tmp_path_factory.mktemp(f"decoder-{kind}")
            model_dir = make_tiny_decoder(kind, base / "hf")
            onnx_model = export_decoder(model_dir, base / "onnx")
            root = assemble_bundle(model_dir, onnx_model, base / "bundle", f"tiny-{kind}")
            built[kind] = DecoderBundle(kind, model_dir, root)
        return built[kind]

    return get


@pytest.fixture(scope="session")
def gqa_bundle(tmp_path_factory: pytest.TempPathFactory, decoder_bundle):
    """``gqa_bundle(kind)``: the tiny decoder's export with edgepipe's GroupQueryAttention
    rewrite (Llama and Qwen2), as a bundle whose runtime keeps the KV cache in place."""
    from edgepipe.graph import decoder_graph

    built: dict[str, DecoderBundle] = {}

    def get(kind: str) -> DecoderBundle:
        if kind not in built:
            plain = decoder_bundle(kind)
            base = tmp_path_factory.mktemp(f"gqa-{kind}")
            config = json.loads((plain.model_dir / "config.json").read_text())
            info = decoder_graph.optimize(plain.root / "model" / "model.onnx", base / "model.onnx", config)
            assert info["attention_layers_fused"] == config["num_hidden_layers"]
            root = assemble_bundle(plain.model_dir, base / "model.onnx", base / "bundle", kind)
            built[kind] = DecoderBundle(kind, plain.model_dir, root)
        return built[kind]

    return get
