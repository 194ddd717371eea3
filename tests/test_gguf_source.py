"""GGUF files as a model source: written here from a tiny Llama, converted, and refused when bad."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from tokenizers import pre_tokenizers

from edgepipe import sources
from edgepipe.cli import main
from edgepipe.errors import ModelError
from edgepipe.runtime.integrity import sha256_file
from edgepipe.sources import gguf
from edgepipe.tasks.texts import builtin_texts
from tests.decoders import CHATML, make_tiny_decoder
from tests.gguf_files import write_llama_gguf

TEXTS = [
    *builtin_texts("embedding")[:40],
    "Call 0800 123 4567 before 9:30, or ₹2,500 for 3½ kg.\n\tDone.",
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_decoder("llama", tmp_path_factory.mktemp("gguf-src") / "tiny-llama")


@pytest.fixture(scope="module")
def ggufs(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ggufs")
    return {
        "f32": write_llama_gguf(tiny_llama, root / "tiny-f32.gguf", chat_template=CHATML),
        "q8": write_llama_gguf(tiny_llama, root / "tiny-q8.gguf", quant="Q8_0", pre="smollm"),
    }


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPIPE_CACHE_DIR", str(cache))
    return cache


def logits(model_dir: Path, ids: list[int], q8_0: bool = False) -> np.ndarray:
    """The model's logits; with ``q8_0``, after rounding its matrices to Q8_0 and back."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if q8_0 and p.ndim == 2:
                q = gguf.quants.quantize(p.numpy(), gguf.GGMLQuantizationType.Q8_0)
                p.copy_(torch.from_numpy(gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0)))
        return model(torch.tensor([ids])).logits[0].numpy()


def test_f32_gguf_converts_to_the_model_it_was_written_from(tiny_llama, ggufs, own_cache):
    from transformers import AutoTokenizer

    src = sources.resolve(str(ggufs["f32"]))
    assert src.kind == "gguf" and src.task == "text-generation" and src.name == "tiny-f32"
    assert src.path.is_relative_to(own_cache / gguf.CACHE_STAGE)
    described = src.describe()
    assert described["format"] == "gguf" and described["quantization"] == "F32"
    assert described["ref"] == ggufs["f32"].name and described["tensor_types"] == {"F32": 20}
    assert src.digest == sha256_file(ggufs["f32"])
    ids = [5, 17, 99, 200, 3, 45, 12, 250]
    np.testing.assert_allclose(logits(src.path, ids), logits(tiny_llama, ids), atol=1e-5)

    original = AutoTokenizer.from_pretrained(str(tiny_llama))
    rebuilt = AutoTokenizer.from_pretrained(str(src.path))
    for text in TEXTS:
        encoded = rebuilt(text)["input_ids"]  # add_bos_token is false in the GGUF: no BOS
        assert encoded == original(text, add_special_tokens=False)["input_ids"], text
        assert rebuilt.decode(encoded) == text
    assert (rebuilt.bos_token, rebuilt.eos_token, rebuilt.unk_token) == ("<s>", "</s>", "<unk>")
    assert rebuilt.convert_tokens_to_ids("</s>") == json.loads((src.path / "config.json").read_text())["eos_token_id"]
    assert rebuilt.chat_template == CHATML
    # transformers' own GGUF tokenizer: the same ids once its forced BOS is taken off.
    theirs = AutoTokenizer.from_pretrained(str(ggufs["f32"].parent), gguf_file=ggufs["f32"].name)
    for text in TEXTS:
        assert rebuilt(text)["input_ids"] == theirs(text, add_special_tokens=False)["input_ids"]
    assert theirs("hi")["input_ids"][0] == theirs.bos_token_id  # the forced BOS, not ours
    assert rebuilt("<s>hi</s>")["input_ids"][0] == original.convert_tokens_to_ids("<s>")

    # A second resolve is a cache hit: the same directory, no new entry.
    assert sources.resolve(str(ggufs["f32"])).path == src.path
    assert len(list((own_cache / gguf.CACHE_STAGE).iterdir())) == 1


def test_quantized_gguf_is_dequantized_and_ids_match_transformers_gguf_tokenizer(tiny_llama, ggufs, own_cache):
    from transformers import AutoTokenizer

    src = sources.resolve(str(ggufs["q8"]))
    assert src.describe()["quantization"] == "Q8_0"
    assert src.describe()["tensor_types"] == {"F32": 5, "Q8_0": 15}
    ids = [5, 17, 99, 200, 3, 45, 12, 250]
    # Dequantized exactly: the logits of the original with its matrices rounded to Q8_0 and back.
    np.testing.assert_allclose(logits(src.path, ids), logits(tiny_llama, ids, q8_0=True), atol=1e-5)

    # "smollm" splits digits one by one before GPT-2's regex, as SmolLM's own tokenizer.json does.
    original = AutoTokenizer.from_pretrained(str(tiny_llama))
    original.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    rebuilt = AutoTokenizer.from_pretrained(str(src.path))
    for text in TEXTS:
        assert rebuilt(text)["input_ids"] == original(text, add_special_tokens=False)["input_ids"]
    assert rebuilt("2024")["input_ids"] == [rebuilt.convert_tokens_to_ids(d) for d in "2024"]

    warning = gguf.requantize_warning(str(ggufs["q8"]))
    assert warning and "stored as Q8_0; quantizing it again compounds the error" in warning
    assert gguf.requantize_warning(str(ggufs["f32"])) is None


def _rewrite(path: Path, dest: Path, **changes) -> Path:
    """``path``'s tensors and metadata with some string fields changed."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = changes.get("general.architecture", reader.fields["general.architecture"].contents())
    w = gguf.GGUFWriter(str(dest), arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = changes.get(key, field.contents())
        vtype = field.types[0]
        if key.startswith("llama.") and arch != "llama":
            key = f"{arch}.{key.removeprefix('llama.')}"
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dest


def build_fails(model: Path, out: Path, cache: Path) -> str:
    result = CliRunner().invoke(
        main, ["build", "--model", str(model), "--target", "rpi5", "--out", str(out), "--no-bench"]
    )
    assert result.exit_code == 4, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("building for"), result.stderr
    assert not out.exists() or not any(out.iterdir())
    assert not cache.exists() or not any(cache.rglob("*"))
    return lines[1]


def test_bad_ggufs_are_one_line_exit_4_nothing_left(ggufs, tmp_path, own_cache):
    data = ggufs["f32"].read_bytes()
    cut = tmp_path / "cut.gguf"
    for size in (6, 200, len(data) // 2, len(data) - 7):
        cut.write_bytes(data[:size])
        line = build_fails(cut, tmp_path / "out", own_cache)
        assert "truncated" in line and "re-download it" in line, line
    foreign = tmp_path / "model.gguf"
    foreign.write_text('{"model_type": "llama"}\n')
    assert "not a GGUF file" in build_fails(foreign, tmp_path / "out", own_cache)
    old = tmp_path / "old.gguf"
    old.write_bytes(data[:4] + (1).to_bytes(4, "little") + data[8:])
    assert "GGUF version 1 is not supported" in build_fails(old, tmp_path / "out", own_cache)

    cases = {
        "qwen2": ({"general.architecture": "qwen2"}, "GGUF architecture 'qwen2' is not supported"),
        "spm": ({"tokenizer.ggml.model": "llama"}, "GGUF vocabulary 'llama' is not supported"),
        "pre": ({"tokenizer.ggml.pre": "qwen2"}, "GGUF pre-tokenizer 'qwen2' is not supported"),
    }
    for name, (changes, message) in cases.items():
        path = _rewrite(ggufs["f32"], tmp_path / f"{name}.gguf", **changes)
        line = build_fails(path, tmp_path / "out", own_cache)
        assert message in line and "supported: " in line, line


def test_peek_task_and_is_gguf(ggufs, tmp_path):
    assert sources.peek_task(str(ggufs["f32"])) == "text-generation"
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(ggufs["f32"].read_bytes()[:64])
    assert gguf.is_gguf(str(renamed))  # by its magic
    with pytest.raises(ModelError, match="truncated or corrupt GGUF file"):
        sources.resolve(str(renamed))
    assert not gguf.is_gguf(str(tmp_path))
    with pytest.raises(ModelError, match="nope.gguf: GGUF file does not exist"):
        sources.resolve(str(tmp_path / "nope.gguf"))
    os.remove(renamed)


def test_build_from_a_quantized_gguf_warns_and_records_the_source(ggufs, tmp_path):
    out, texts = tmp_path / "dist", tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:4]))  # a short evaluation: the source is what is tested
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            str(ggufs["q8"]),
            "--target",
            "rpi5",
            "--profile",
            "fp32",
            "--out",
            str(out),
            "--no-bench",
            "--json",
            "--eval-data",
            str(texts),
        ],
    )
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "tiny-q8.gguf is stored as Q8_0" in warnings[0]
    manifest = json.loads((out / "tiny-q8-rpi5" / "manifest.json").read_text())
    source = manifest["model"]["source"]
    assert source["kind"] == "gguf" and source["format"] == "gguf"
    assert source["quantization"] == "Q8_0" and source["ref"] == ggufs["q8"].name
    assert source["digest"] == f"sha256:{sha256_file(ggufs['q8'])}"
