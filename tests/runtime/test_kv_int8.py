"""An int8 KV cache (graph/kv_cache.py): the runtime binds int8 buffers, and a decode reads them
close to the float32 cache, with the scales calibrated on the built-in texts."""

import dataclasses
import shutil

import numpy as np
import onnx
import pytest

from edgepipe.graph import kv_cache
from edgepipe.runtime.generator import Generator
from edgepipe.stages.quantize import CalibrationData, decoder_calibration
from edgepipe.tasks.texts import builtin_calibration_texts
from tests.runtime.conftest import DecoderBundle, assemble_bundle
from tests.runtime.test_generator import PROMPTS
from tests.runtime.test_kvcache import GQA_KINDS, long_prompt

# Bounds on a decode's steps against the float32 cache (teacher-forced, 32 steps after a prompt of
# up to 200 tokens). Measured on these tiny models (sharp random logits: initializer_range 0.2),
# the 5 prompts below: mean KL 0.0007 to 0.0020 nats, top-1 agreement 0.91 to 1.0 per prompt.
MAX_MEAN_KL = 0.005
MIN_AGREEMENT = 0.85


def feeds(bundle: DecoderBundle, model):
    texts = builtin_calibration_texts("generation")
    calibration = CalibrationData(texts, bundle.root / "tokenizer" / "tokenizer.json", 256)
    return decoder_calibration(calibration, model)


@pytest.fixture(scope="module")
def int8_bundle(gqa_bundle, tmp_path_factory):
    """``int8_bundle(kind)``: the GroupQueryAttention bundle with an int8 cache."""
    built: dict[str, tuple[DecoderBundle, dict]] = {}

    def get(kind: str) -> tuple[DecoderBundle, dict]:
        if kind not in built:
            f32 = gqa_bundle(kind)
            base = tmp_path_factory.mktemp(f"int8-{kind}")
            shutil.copy(f32.root / "model" / "model.onnx", base / "model.onnx")
            record = kv_cache.apply(base / "model.onnx", "int8", feeds(f32, base / "model.onnx"))
            root = assemble_bundle(f32.model_dir, base / "model.onnx", base / "bundle", kind)
            built[kind] = (DecoderBundle(kind, f32.model_dir, root), record)
        return built[kind]

    return get


def no_eos(bundle, **kwargs):
    g = Generator.from_bundle(bundle.root, threads=1)
    config = dataclasses.replace(g.config, eos_token_ids=(), **kwargs)
    return Generator(
        bundle.root / "model" / "model.onnx",
        bundle.root / "tokenizer" / "tokenizer.json",
        config,
        1,
    )


def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def decode_logits(g, prompt, tokens):
    """Logits of every step as ``tokens`` follow ``prompt`` (teacher-forced), in-place cache."""
    rows = [g.cache.forward(np.asarray([prompt], np.int64), 0)[0, -1]]
    for i, token in enumerate(tokens):
        rows.append(g.cache.forward(np.asarray([[token]], np.int64), len(prompt) + i)[0, -1])
    return np.stack(rows)


@pytest.mark.parametrize("kind", GQA_KINDS)
def test_int8_cache_binds_int8_buffers_and_decodes_close_to_float32(gqa_bundle, int8_bundle, kind):
    bundle, record = int8_bundle(kind)
    assert record["dtype"] == "int8" and record["skipped"] is None and record["largest"] > 0
    f32, i8 = no_eos(gqa_bundle(kind)), no_eos(bundle)
    assert i8.kv_dtype == np.int8 and i8.cache is not None
    assert all(a.dtype == np.int8 for a in i8.cache.arrays.values())
    assert all(a.dtype == np.float32 for a in f32.cache.arrays.values())
    model = onnx.load(str(bundle.root / "model" / "model.onnx"))
    assert {v.type.tensor_type.elem_type for v in kv_cache.cache_values(model.graph)} == {3}
    gqa = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    assert all(scales[n.input[12]].shape == (1, 2, 1, 16) for n in gqa)  # [1, kv, 1, head_dim]
    for prompt in [*PROMPTS, " ".join(PROMPTS * 6)]:
        ids = f32.tokenizer.encode(prompt).ids[:200]
        reference = f32.generate(ids, max_new_tokens=32).token_ids
        a = log_softmax(decode_logits(f32, ids, reference[:-1]))
        b = log_softmax(decode_logits(i8, ids, reference[:-1]))
        kl = (np.exp(a) * (a - b)).sum(-1)
        assert kl.mean() < MAX_MEAN_KL, (prompt[:20], kl.mean())
        assert np.mean(a.argmax(-1) == b.argmax(-1)) >= MIN_AGREEMENT, prompt[:20]


def test_int8_cache_on_the_plain_loop_and_at_the_context_limit(int8_bundle):
    from transformers import AutoTokenizer

    bundle, _ = int8_bundle("llama")
    g = no_eos(bundle)
    ids = long_prompt(AutoTokenizer.from_pretrained(bundle.model_dir), 250)
    in_place = g.generate(ids, max_new_tokens=64)
    assert in_place.stop_reason == "length" and len(in_place.token_ids) == 6
    g.cache = None  # the loop that feeds present.* back as past_key_values.*: int8 too
    assert g.generate(ids, max_new_tokens=64).token_ids == in_place.token_ids
    assert g.logits(ids[:20]).dtype == np.float32


def test_int8_cache_holds_four_times_the_default_context(gqa_bundle, int8_bundle):
    # 2 layers x 2 x 2 heads x 16 = 128 values a position: 512 bytes in float32, 128 in int8, so
    # a budget of 16 KiB holds 32 positions of one and 128 of the other.
    for bundle, positions in ((gqa_bundle("llama"), 32), (int8_bundle("llama")[0], 128)):
        assert no_eos(bundle, ram_mb=16 / 1024).max_context == positions


def test_unfused_attention_keeps_its_float32_cache(decoder_bundle, tmp_path):
    model = tmp_path / "model.onnx"
    shutil.copy(decoder_bundle("gpt2").root / "model" / "model.onnx", model)
    before = model.read_bytes()
    record = kv_cache.apply(model, "int8", feeds(decoder_bundle("gpt2"), model))
    assert record["dtype"] == "float32" and "not GroupQueryAttention" in record["skipped"]
    assert model.read_bytes() == before
    with pytest.raises(ValueError, match="kv_cache must be one of float32, int8"):
        kv_cache.apply(model, "float16", None)
