"""GGUF files of each supported family made by llama.cpp's own converter (convert_hf_to_gguf.py from
the llama-cpp-python sdist, `make bench-llm`'s venv) from tiny random Hugging Face models: the
rebuilt tokenizer gives llama.cpp's ids, and the fp32 bundle built from the GGUF generates the
same greedy tokens as the one built from the Hugging Face directory. Slow: a few minutes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from tests.decoders import make_tiny_decoder
from tests.families import TINY

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
LLAMA_VENV = Path(os.environ.get("LLAMA_VENV", REPO / ".llamacpp-venv"))
if not (LLAMA_VENV / ".installed-stamp").exists():
    LLAMA_VENV = Path("/work/main/.llamacpp-venv")
LLAMA_CPP = next(iter(sorted((LLAMA_VENV / "src").glob("llama_cpp_python-*/vendor/llama.cpp"))), None)
# family -> (llama.cpp's architecture, the pre-tokenizer the GGUF declares, the model_type it comes
# back as: llama.cpp writes Mistral as Llama).
FAMILIES = {
    "llama": ("llama", "llama-bpe", "llama"),
    "mistral": ("llama", "gpt-2", "llama"),
    "qwen2": ("qwen2", "qwen2", "qwen2"),
    "qwen3": ("qwen3", "qwen2", "qwen3"),
    "gpt2": ("gpt2", "gpt-2", "gpt2"),
    "bloom": ("bloom", "gpt-2", "bloom"),
}
TEXTS = [
    "Hello world! The year 2024 had 366 days.",
    "turn on the kitchen lights, then play 12345 songs",
    "naïve café, 東京\n\ndef f(x):\n    return x**2  # it's done",
    "   spaces   and\ttabs  ",
]
PROMPTS = ("The kitchen lights are", "turn on the lights", "12 + 30 =")


def make_hf(kind: str, dest: Path) -> Path:
    if kind in TINY:
        TINY[kind](dest)
    else:
        make_tiny_decoder(kind, dest)
    config = json.loads((dest / "config.json").read_text())
    if kind == "gpt2":  # llama.cpp's GPT-2 converter reads n_ctx, which real GPT-2 configs carry
        (dest / "config.json").write_text(json.dumps({**config, "n_ctx": config["n_positions"]}))
    if kind == "bloom":  # without seq_length (real BLOOMs state 2048) llama.cpp writes n_embed as the context
        (dest / "config.json").write_text(json.dumps({**config, "seq_length": 256}))
    return dest


def convert(hf: Path, dest: Path, pre: str) -> Path:
    """convert_hf_to_gguf.py, told the tokenizer's pre-tokenizer (it has no hash for one trained
    here) and kept off SentencePiece (these are byte-level BPE)."""
    assert LLAMA_CPP is not None
    script = f"""
import runpy, sys
sys.path[:0] = [{str(LLAMA_CPP)!r}, {str(LLAMA_CPP / "gguf-py")!r}]
import conversion.base as base
def byte_level_only(self, *args, **kwargs):
    raise FileNotFoundError("byte-level BPE only")
base.TextModel._set_vocab_sentencepiece = byte_level_only
base.TextModel._set_vocab_llama_hf = byte_level_only
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
sys.argv = ["convert_hf_to_gguf.py", {str(hf)!r}, "--outfile", {str(dest)!r}, "--outtype", "f32"]
runpy.run_path({str(LLAMA_CPP / "convert_hf_to_gguf.py")!r}, run_name="__main__")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=dest.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    return dest


def llama_cpp_ids(gguf: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's own tokenization (llama-cpp-python, vocabulary only), no BOS, no specials."""
    script = """
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
print(json.dumps([llm.tokenize(t.encode(), add_bos=False, special=False) for t in json.loads(sys.argv[2])]))
"""
    done = subprocess.run(
        [str(LLAMA_VENV / "bin" / "python"), "-c", script, str(gguf), json.dumps(texts)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def build_fp32(model: Path, out: Path) -> Path:
    result = CliRunner().invoke(
        main, ["build", "--model", str(model), "--target", "laptop-avx2", "--profile", "fp32", "--no-bench",
               "--out", str(out), "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout.strip().splitlines()[-1])["bundle_dir"])


def greedy(bundle: Path, ids: list[int]) -> list[int]:
    from edgepipe.runtime.generator import Generator

    generator = Generator.from_bundle(bundle)
    generator.config = dataclasses.replace(generator.config, eos_token_ids=())
    generator.eos = frozenset()
    return generator.generate(ids, max_new_tokens=16).token_ids


@pytest.mark.skipif(LLAMA_CPP is None, reason="needs `make bench-llm`'s llama.cpp venv (.llamacpp-venv)")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_gguf_of_each_family_is_token_exact_with_its_hf_directory(family, tmp_path, monkeypatch):
    from edgepipe.sources import gguf

    monkeypatch.setenv("EDGEPIPE_CACHE_DIR", str(tmp_path / "cache"))
    arch, pre, model_type = FAMILIES[family]
    hf = make_hf(family, tmp_path / f"tiny-{family}")
    path = convert(hf, tmp_path / f"tiny-{family}.gguf", pre)
    info = gguf.inspect(path)
    assert info.architecture == arch and info.fields.get("tokenizer.ggml.pre") == pre
    ours = gguf.build_tokenizer(info)
    assert [ours(t, add_special_tokens=False)["input_ids"] for t in TEXTS] == llama_cpp_ids(path, TEXTS)
    from_gguf, from_hf = build_fp32(path, tmp_path / "out-gguf"), build_fp32(hf, tmp_path / "out-hf")
    manifest = json.loads((from_gguf / "manifest.json").read_text())
    assert manifest["model"]["source"]["format"] == "gguf"
    assert manifest["model"]["source"]["model_type"] == model_type
    for prompt in PROMPTS:
        ids = ours(prompt, add_special_tokens=False)["input_ids"]
        assert greedy(from_gguf, ids) == greedy(from_hf, ids), prompt
