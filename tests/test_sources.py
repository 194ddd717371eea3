import json
import shutil

import pytest

from edgepipe import sources
from edgepipe.errors import ModelError


def test_packaged_default_resolves_offline():
    src = sources.resolve(None)
    assert src.name == "all-minilm-l6-v2" and src.kind == "package"
    assert src.model_type == "bert" and src.task == "embedding"
    assert (src.path / "model.safetensors").is_file() and len(src.digest) == 64


def test_digest_follows_content(tiny_bert):
    before = sources.resolve(str(tiny_bert)).digest
    (tiny_bert / "README.md").write_text("changed")
    assert sources.resolve(str(tiny_bert)).digest != before


def test_missing_path(tmp_path):
    with pytest.raises(ModelError, match="model directory does not exist"):
        sources.resolve(str(tmp_path / "nope"))


def test_no_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json; not a Hugging Face model directory"):
        sources.resolve(str(tmp_path))


def test_no_weights(tiny_bert):
    (tiny_bert / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"no model weights \(model.safetensors\) found"):
        sources.resolve(str(tiny_bert))


def test_pickle_only_is_refused_unless_allowed(tiny_bert):
    (tiny_bert / "model.safetensors").rename(tiny_bert / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only pickle weights.*--allow-pickle"):
        sources.resolve(str(tiny_bert))
    assert sources.resolve(str(tiny_bert), allow_pickle=True).allow_pickle


def test_lfs_pointer(tiny_bert):
    (tiny_bert / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    )
    with pytest.raises(ModelError, match="a Git LFS pointer, not weights; run `git lfs pull`"):
        sources.resolve(str(tiny_bert))


def test_truncated_and_garbage_safetensors(tiny_bert):
    weights = tiny_bert / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelError, match="truncated or corrupt, re-download it"):
        sources.resolve(str(tiny_bert))
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="truncated or corrupt safetensors header"):
        sources.resolve(str(tiny_bert))


def test_unsupported_architecture_lists_supported(tiny_bert):
    config = json.loads((tiny_bert / "config.json").read_text())
    config["model_type"] = "whisper"
    (tiny_bert / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="model_type 'whisper' is not supported; supported: bert"):
        sources.resolve(str(tiny_bert))


def test_custom_code_needs_trust(tiny_bert):
    config = json.loads((tiny_bert / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (tiny_bert / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="pass --trust-remote-code"):
        sources.resolve(str(tiny_bert))
    assert sources.resolve(str(tiny_bert), trust_remote_code=True).trust_remote_code


def test_tokenizer_missing_or_mismatched(tiny_bert, tmp_path):
    shutil.copy(tiny_bert / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((tiny_bert / "config.json").read_text())
    config["vocab_size"] = 100
    (tiny_bert / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="model's vocab_size is 100; the tokenizer does not belong"):
        sources.resolve(str(tiny_bert))
    (tiny_bert / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="no tokenizer.json"):
        sources.resolve(str(tiny_bert))
