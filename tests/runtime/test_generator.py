"""The bundle's Generator on tiny Llama, Qwen2 and GPT-2 exports, against transformers itself."""

import dataclasses

import numpy as np
import pytest
import torch

from edgepipe.runtime.generator import GenerationConfig, Generator, OptionError, PromptError
from edgepipe.runtime.sampling import NUCLEUS_CANDIDATES, Sampler, TextStream
from tests.decoders import CHATML, KINDS

PROMPTS = (
    "Turn on the kitchen lights",
    "hello",
    "Schalte bitte das Licht im Wohnzimmer aus.",
    "What is the weather like in Lisbon this weekend?",
)


def generator(bundle, **changes):
    """The bundle's Generator, its runtime config changed as asked."""
    g = Generator.from_bundle(bundle.root, threads=1)
    if not changes:
        return g
    config = dataclasses.replace(g.config, **changes)
    return Generator(
        bundle.root / "model" / "model.onnx",
        bundle.root / "tokenizer" / "tokenizer.json",
        config,
        1,
    )


def hf(bundle):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundle.model_dir)
    model = AutoModelForCausalLM.from_pretrained(bundle.model_dir).eval()
    return tokenizer, model


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_equal_transformers_generate(decoder_bundle, kind):
    bundle = decoder_bundle(kind)
    tokenizer, model = hf(bundle)
    # No EOS on our side; transformers suppresses it for 16 tokens: equal only if greedy never
    # picks it, which the assertion below checks, so the comparison is of plain argmax decoding.
    g = generator(bundle, eos_token_ids=())
    eos = tokenizer.eos_token_id
    for prompt in PROMPTS:
        enc = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=16, min_new_tokens=16, pad_token_id=eos)
        expected = out[0, enc["input_ids"].shape[1] :].tolist()
        assert g.encode(prompt) == enc["input_ids"][0].tolist()
        result = g.generate(prompt, max_new_tokens=16)
        assert eos not in result.token_ids, "greedy picked EOS: choose another prompt"
        assert result.token_ids == expected, prompt
        assert result.stop_reason == "length" and len(expected) == 16
        assert result.text == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.parametrize("kind", KINDS)
def test_logits_equal_transformers_forward(decoder_bundle, kind):
    bundle = decoder_bundle(kind)
    tokenizer, model = hf(bundle)
    ids = tokenizer(PROMPTS[2])["input_ids"]
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].numpy()
    got = generator(bundle).logits(ids)
    assert got.shape == (len(ids), model.config.vocab_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_same_seed_same_tokens_other_seeds_differ(decoder_bundle):
    g = generator(decoder_bundle("llama"), eos_token_ids=())
    runs = {seed: g.generate(PROMPTS[0], max_new_tokens=24, temperature=1.0, seed=seed).token_ids for seed in range(4)}
    again = g.generate(PROMPTS[0], max_new_tokens=24, temperature=1.0, seed=2).token_ids
    assert again == runs[2]
    assert len({tuple(ids) for ids in runs.values()}) > 1
    greedy = g.generate(PROMPTS[0], max_new_tokens=24).token_ids
    assert any(ids != greedy for ids in runs.values())


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_1_is_greedy(decoder_bundle, kind):
    g = generator(decoder_bundle(kind), eos_token_ids=())
    greedy = g.generate(PROMPTS[1], max_new_tokens=16)
    sampled = g.generate(PROMPTS[1], max_new_tokens=16, temperature=1.5, top_k=1, seed=7)
    assert sampled.token_ids == greedy.token_ids


def hf_candidates(logits, temperature, top_k, top_p):
    """Transformers' warpers (temperature, top-k, top-p) in numpy: the set of ids that survive."""
    scores = logits.astype(np.float64) / temperature
    if top_k:
        scores = np.where(scores < np.sort(scores)[-top_k], -np.inf, scores)
    order = np.argsort(scores)  # ascending, as TopPLogitsWarper sorts
    probs = np.exp(scores[order] - scores.max())
    remove = np.cumsum(probs / probs.sum()) <= 1 - top_p
    remove[-1] = False
    return set(order[~remove & np.isfinite(scores[order])].tolist())


@pytest.mark.parametrize("spread", [0.5, 3.0, 12.0])  # flat logits need the full sort; peaked not
@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 0, 0.9), (0.7, 0, 0.5), (1.3, 50, 0.95), (1.0, 1000, 0.8), (1.0, 40, 1.0)],
)
def test_sampling_candidates_follow_transformers(spread, temperature, top_k, top_p):
    rng = np.random.default_rng(0)
    for _ in range(5):
        logits = (rng.standard_normal(5000) * spread).astype(np.float32)
        ids, probs = Sampler(temperature, top_k, top_p, seed=0).candidates(logits)
        assert set(ids.tolist()) == hf_candidates(logits, temperature, top_k, top_p)
        assert probs.sum() == pytest.approx(1.0) and np.all(np.diff(probs) <= 1e-12)
        scaled = logits[ids].astype(np.float64) / temperature
        expected = np.exp(scaled - scaled.max())
        np.testing.assert_allclose(probs, expected / expected.sum(), rtol=1e-5)


def test_sampling_frequencies_follow_the_probabilities():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    sampler = Sampler(1.0, 0, 1.0, seed=123)
    counts = np.bincount([sampler(logits) for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.015)
    nucleus = Sampler(1.0, 0, 0.75, seed=123)  # 0.5 + 0.3 reaches 0.75: two tokens left
    assert {nucleus(logits) for _ in range(2000)} == {0, 1}
    assert NUCLEUS_CANDIDATES < 5000  # the spread tests above exercise both nucleus paths


@pytest.mark.parametrize("kind", KINDS)
def test_stop_string_cuts_the_text_before_it(decoder_bundle, kind):
    g = generator(decoder_bundle(kind), eos_token_ids=())
    full = g.generate(PROMPTS[0], max_new_tokens=32)
    stop = next(full.text[i : i + 2] for i in range(4, len(full.text)) if full.text[i : i + 2].strip())
    pieces: list[str] = []
    cut = g.generate(PROMPTS[0], max_new_tokens=32, stop=["never there", stop], on_text=pieces.append)
    assert cut.stop_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert "".join(pieces) == cut.text
    assert cut.token_ids == full.token_ids[: len(cut.token_ids)]
    assert len(cut.token_ids) < len(full.token_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_eos_stops_generation(decoder_bundle, kind):
    bundle = decoder_bundle(kind)
    full = generator(bundle, eos_token_ids=()).generate(PROMPTS[2], max_new_tokens=16)
    eos = full.token_ids[5]
    at = full.token_ids.index(eos)
    result = generator(bundle, eos_token_ids=(12345, eos)).generate(PROMPTS[2], max_new_tokens=16)
    assert result.stop_reason == "eos"
    assert result.token_ids == full.token_ids[: at + 1]
    assert result.text == g_decode(bundle, full.token_ids[:at])


def g_decode(bundle, ids):
    return Generator.from_bundle(bundle.root).tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_pieces_add_up_to_the_text(decoder_bundle, kind):
    g = generator(decoder_bundle(kind), eos_token_ids=())
    for prompt in PROMPTS:
        pieces: list[str] = []
        result = g.generate(prompt, max_new_tokens=48, on_text=pieces.append)
        assert "".join(pieces) == result.text
        assert result.text == g.tokenizer.decode(result.token_ids, skip_special_tokens=True)
        assert all(pieces)


def test_stream_never_emits_half_a_character(decoder_bundle):
    # Byte-level BPE splits these characters over several tokens; a piece must wait for all.
    g = Generator.from_bundle(decoder_bundle("gpt2").root)
    text = "Grüße aus Köln: 日本語 ok ✓ 🙂 fin"
    ids = g.tokenizer.encode(text).ids
    assert len(ids) > len(text.split())  # multi-byte characters did split
    pieces: list[str] = []
    stream = TextStream(g.tokenizer, (), pieces.append)
    for token in ids:
        stream.add(token)
    assert stream.finish() == text
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_stream_holds_back_what_may_start_a_stop_string(decoder_bundle):
    g = Generator.from_bundle(decoder_bundle("gpt2").root)
    pieces: list[str] = []
    stream = TextStream(g.tokenizer, ["Köln!"], pieces.append)
    stopped = [stream.add(t) for t in g.tokenizer.encode("Grüße aus Köln! und mehr").ids]
    assert any(stopped) and stream.finish() == "Grüße aus "
    assert "".join(pieces) == "Grüße aus "
    held = TextStream(g.tokenizer, ["Kö"], pieces.clear() or pieces.append)
    for token in g.tokenizer.encode("aus K").ids:
        held.add(token)
    assert "".join(pieces) == "aus "  # "K" may begin "Kö": not shown yet
    assert held.finish() == "aus K" and "".join(pieces) == "aus K"


def test_chat_ids_equal_apply_chat_template(decoder_bundle):
    bundle = decoder_bundle("qwen2")
    tokenizer, _ = hf(bundle)
    g = generator(bundle)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        expected = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        assert g.encode(prompt, chat=True) == list(expected)
    result = g.generate(PROMPTS[0], chat=True, max_new_tokens=4)
    assert result.timings["prompt_tokens"] == len(g.encode(PROMPTS[0], chat=True))


def test_chat_template_that_writes_bos_is_not_given_a_second(decoder_bundle, tmp_path):
    from transformers import AutoTokenizer

    from edgepipe.tasks.decoder_runtime import chat_template
    from tests.decoders import with_chat_template

    bundle = decoder_bundle("llama")
    model_dir = with_chat_template(
        bundle.model_dir,
        tmp_path / "llama",
        "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    source, special = chat_template(model_dir)
    g = generator(bundle, chat_template=source, special_tokens=special)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    expected = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = g.encode(PROMPTS[0], chat=True)
    assert ids == list(expected) and ids.count(tokenizer.bos_token_id) == 1


def test_chat_without_a_template_is_refused(decoder_bundle):
    g = generator(decoder_bundle("llama"))
    assert g.config.chat_template is None
    with pytest.raises(OptionError, match="no chat template"):
        g.generate("hi", chat=True)


def test_prompt_limits(decoder_bundle):
    g = generator(decoder_bundle("gpt2"), eos_token_ids=())
    limit = g.config.max_length
    with pytest.raises(PromptError, match=f"reads at most {limit} tokens"):
        g.generate([5] * limit)
    with pytest.raises(PromptError, match="empty"):
        g.generate("")
    near = g.generate([5] * (limit - 3), max_new_tokens=10)
    assert near.stop_reason == "length" and len(near.token_ids) == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"seed": -3}, "seed"),
        ({"stop": [""]}, "stop"),
    ],
)
def test_bad_options_are_refused(decoder_bundle, options, message):
    with pytest.raises(OptionError, match=message):
        generator(decoder_bundle("llama")).generate("hi", **options)


def test_timings_describe_the_run(decoder_bundle):
    result = generator(decoder_bundle("qwen2"), eos_token_ids=()).generate(PROMPTS[3], max_new_tokens=8)
    t = result.timings
    assert set(t) == {
        "prompt_tokens",
        "new_tokens",
        "time_to_first_token_ms",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "total_ms",
    }
    assert t["new_tokens"] == len(result.token_ids) == 8
    assert t["prompt_tokens"] == len(generator(decoder_bundle("qwen2")).encode(PROMPTS[3]))
    assert 0 < t["time_to_first_token_ms"] < t["total_ms"]
    assert t["prefill_tokens_per_s"] > 0 and t["decode_tokens_per_s"] > 0


def test_config_round_trips_through_json(decoder_bundle):
    config = generator(decoder_bundle("qwen2")).config
    assert GenerationConfig.from_json(config.to_json()) == config
    assert config.chat_template == CHATML and config.special_tokens["eos_token"] == "<|im_end|>"
