"""The in-place KV cache (GroupQueryAttention on one buffer per layer) and chunked prefill, against
transformers' greedy tokens, up to the tiny models' 256-token context."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgepipe.runtime.generator import Generator, OptionError, PromptError
from edgepipe.runtime.kvcache import default_max_context, kv_bytes_per_token, prefill_chunk
from tests.decoders import KINDS
from tests.runtime.test_generate_cli import one_line_error, run_bundle
from tests.runtime.test_generator import PROMPTS, hf

GQA_KINDS = ("llama", "qwen2")


def open_generator(bundle, max_context=None, chunk=None):
    """The bundle's Generator without EOS (greedy runs its full length), prefill chunk as asked."""
    g = Generator.from_bundle(bundle.root, threads=1)
    config = dataclasses.replace(g.config, eos_token_ids=())
    g = Generator(
        bundle.root / "model" / "model.onnx",
        bundle.root / "tokenizer" / "tokenizer.json",
        config,
        1,
        max_context=max_context,
    )
    if chunk is not None:
        g.prefill_chunk = chunk
    return g


def hf_greedy(model, ids, new_tokens):
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=0,
        )
    return out[0, len(ids) :].tolist()


def long_prompt(tokenizer, length):
    """``length`` ids of real text (the test prompts over and over), BOS first where it has one."""
    ids = tokenizer(" ".join(PROMPTS * 40))["input_ids"]
    assert len(ids) >= length
    return ids[:length]


@pytest.mark.parametrize("kind", GQA_KINDS)
def test_in_place_cache_generates_transformers_greedy_tokens(gqa_bundle, kind):
    bundle = gqa_bundle(kind)
    tokenizer, model = hf(bundle)
    g = open_generator(bundle)
    assert g.cache is not None and g.max_context == 256
    # A prompt's pass computes the last position's logits alone (logits_to_keep).
    assert g.last_only and g.cache.forward(np.arange(3, 13, dtype=np.int64)[None], 0).shape[1] == 1
    for prompt in PROMPTS:
        ids = tokenizer(prompt)["input_ids"]
        result = g.generate(prompt, max_new_tokens=16)
        assert result.token_ids == hf_greedy(model, ids, 16), prompt
        assert result.stop_reason == "length"


@pytest.mark.parametrize("kind", GQA_KINDS)
def test_long_prompt_in_chunks_near_the_context_limit(gqa_bundle, kind):
    bundle = gqa_bundle(kind)
    tokenizer, model = hf(bundle)
    ids = long_prompt(tokenizer, 236)  # 236 + 16 = 252 of the model's 256
    expected = hf_greedy(model, ids, 16)
    for chunk in (512, 64, 37):  # one pass; chunks of 64; a last chunk of 14 (236 = 6 x 37 + 14)
        result = open_generator(bundle, chunk=chunk).generate(ids, max_new_tokens=16)
        assert result.token_ids == expected, chunk


@pytest.mark.parametrize("kind", GQA_KINDS)
def test_generation_stops_at_the_context_limit(gqa_bundle, kind):
    bundle = gqa_bundle(kind)
    tokenizer, model = hf(bundle)
    g = open_generator(bundle, chunk=100)
    ids = long_prompt(tokenizer, 250)
    result = g.generate(ids, max_new_tokens=64)
    assert result.stop_reason == "length" and len(result.token_ids) == 6  # positions 250..255
    assert result.token_ids == hf_greedy(model, ids, 6)
    with pytest.raises(PromptError, match="reads at most 256 tokens"):
        g.generate(long_prompt(tokenizer, 256))
    # The next generation on the same cache reads none of what the last one left past its prompt.
    short = tokenizer(PROMPTS[1])["input_ids"]
    assert g.generate(short, max_new_tokens=16).token_ids == hf_greedy(model, short, 16)
    # The same again on a cache of 128 positions.
    small = open_generator(bundle, max_context=128, chunk=50)
    assert small.cache is not None and small.cache.max_context == 128
    result = small.generate(ids[:120], max_new_tokens=64)
    assert result.stop_reason == "length" and result.token_ids == hf_greedy(model, ids[:120], 8)
    with pytest.raises(PromptError, match="reads at most 128 tokens"):
        small.generate(ids[:128])


@pytest.mark.parametrize("kind", KINDS)
def test_plain_path_prefills_in_chunks_too(decoder_bundle, kind):
    bundle = decoder_bundle(kind)
    tokenizer, model = hf(bundle)
    g = open_generator(bundle, chunk=48)
    assert g.cache is None  # optimum's own attention: present = concat(past, new)
    ids = long_prompt(tokenizer, 230)
    assert g.generate(ids, max_new_tokens=16).token_ids == hf_greedy(model, ids, 16)


def test_max_context_option(gqa_bundle):
    bundle = gqa_bundle("llama")
    for bad in (0, 8, 257):
        with pytest.raises(OptionError, match="max_context must be 16 to the model's 256"):
            Generator.from_bundle(bundle.root, max_context=bad)
    proc = run_bundle(bundle.root, "generate", "word " * 40, "--max-context", "32")
    one_line_error(proc, 4, "reads at most 32 tokens (max_context; the model's: 256)")
    proc = run_bundle(bundle.root, "generate", "hello", "--max-context", "300")
    one_line_error(proc, 2, "max_context must be 16 to the model's 256 tokens (got 300)")
    proc = run_bundle(bundle.root, "generate", "hello", "--max-context", "24", "--max-new-tokens", "64", "--json")
    record = json.loads(proc.stdout)
    assert record["stop_reason"] == "length"
    assert record["timings"]["prompt_tokens"] + record["timings"]["new_tokens"] == 24


def test_default_context_fits_the_targets_ram():
    # SmolLM2-135M's cache: 30 layers x 2 x 3 heads x 64 x 4 bytes = 46,080 bytes a token.
    per_token = kv_bytes_per_token(30, 3, 64, 4)
    assert per_token == 46_080
    assert default_max_context(8192, per_token, None) == 8192
    assert default_max_context(8192, per_token, 512) == 8192  # 512 MiB hold 11,650 positions
    assert default_max_context(8192, per_token, 100) == 2275
    assert default_max_context(8192, per_token, 0.1) == 16  # never below a usable context
    assert default_max_context(8, per_token, 0.1) == 8


def test_prefill_chunk_bounds_the_scratch():
    assert prefill_chunk(256, 4, 384) == 512
    # Qwen2.5-0.5B at 2,048: attention scratch 14 x 2048 x 4 bytes a token, logits 151,936 x 4.
    assert prefill_chunk(2048, 14, 151_936) == (64 << 20) // (151_936 * 4)
    assert prefill_chunk(32_768, 14, 1000) == (64 << 20) // (14 * 32_768 * 4)
    assert prefill_chunk(10**9, 64, 10) == 1


def test_serve_refuses_a_max_context_out_of_range(gqa_bundle):
    proc = subprocess.run(
        [sys.executable, str(gqa_bundle("qwen2").root), "serve", "--port", "0", "--max-context", "4096"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1, lines
    assert lines[0] == "error: max_context must be 16 to the model's 256 tokens (got 4096)"
