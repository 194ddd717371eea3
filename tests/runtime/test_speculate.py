"""Speculative decoding by prompt lookup: the greedy tokens of one token a step, in fewer passes."""

import json

import numpy as np
import pytest

from edgepipe.runtime.generator import Generator
from edgepipe.runtime.speculate import K_MAX, MISSES_TO_PAUSE, PAUSE, PromptLookup
from tests.runtime.test_generate_cli import run_bundle
from tests.runtime.test_generator import hf
from tests.runtime.test_kvcache import long_prompt, open_generator


class Corrupted(PromptLookup):
    """Drafts the true greedy continuation, cut to a random length and often wrong at one place:
    every pass is a partial accept, a full accept or a rollback."""

    def __init__(self, ids: list[int], truth: list[int], rng: np.random.Generator) -> None:
        super().__init__(ids)
        self.start, self.truth, self.rng = len(ids), truth, rng

    def draft(self, room: int) -> list[int]:
        done = len(self.tokens) - self.start
        guess = list(self.truth[done : done + min(int(self.rng.integers(0, 7)), room)])
        if guess and self.rng.random() < 0.5:
            guess[int(self.rng.integers(0, len(guess)))] += 1
        return guess


def test_lookup_drafts_what_followed_the_latest_earlier_ngram():
    lookup = PromptLookup([5, 6, 7, 8, 9, 1, 2, 5, 6, 7, 3, 4, 5, 6])
    assert lookup.draft(10) == [7, 3, 4, 5]  # "5 6" last occurred before "7 3 4 5 ..."; k is 4
    assert lookup.draft(2) == [7, 3]  # no more than the room left
    lookup.append(7)
    assert lookup.draft(10) == [3, 4, 5, 6]  # "5 6 7": its latest earlier occurrence wins
    assert PromptLookup([1, 2, 3, 4]).draft(10) == []  # nothing repeats
    assert PromptLookup([1, 2, 1]).draft(10) == []  # a 1-gram alone is no evidence


def test_k_follows_acceptance_and_drafting_pauses_after_misses():
    lookup = PromptLookup([1, 2, 1, 2])
    lookup.update(4, 4)
    assert lookup.k == 6
    for _ in range(4):
        lookup.update(lookup.k, lookup.k)
    assert lookup.k == K_MAX
    lookup.update(K_MAX, 2)
    assert lookup.k == 3
    for _ in range(MISSES_TO_PAUSE):
        lookup.update(lookup.k, 0)
    assert [lookup.draft(10) for _ in range(PAUSE)] == [[]] * PAUSE and lookup.draft(10) == [1]  # k halved on each miss
    assert lookup.stats.to_json()["draft_passes"] == 5 + 1 + MISSES_TO_PAUSE


@pytest.mark.parametrize("path", ["in-place", "plain"])
def test_rollbacks_keep_the_greedy_tokens(gqa_bundle, decoder_bundle, path):
    bundle = gqa_bundle("llama") if path == "in-place" else decoder_bundle("llama")
    g = open_generator(bundle)
    assert (g.cache is not None) == (path == "in-place")
    rng = np.random.default_rng(0)
    drafted = accepted = 0
    for _ in range(6):
        ids = rng.integers(3, 300, int(rng.integers(3, 40))).tolist()
        plain = g.generate(ids, max_new_tokens=48, speculate=False)
        g.drafter = lambda prompt, truth=plain.token_ids: Corrupted(prompt, truth, rng)
        spec = g.generate(ids, max_new_tokens=48, speculate=True)
        del g.drafter
        assert spec.token_ids == plain.token_ids and spec.text == plain.text
        assert spec.timings["speculative"] and "drafted_tokens" not in plain.timings
        drafted += spec.timings["drafted_tokens"]
        accepted += spec.timings["accepted_tokens"]
    assert 0 < accepted < drafted  # accepted drafts and rejected ones, rolled back


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_prompt_lookup_on_repeated_text_is_token_identical(gqa_bundle, kind):
    bundle = gqa_bundle(kind)
    g = open_generator(bundle)
    tokenizer, _ = hf(bundle)
    ids = long_prompt(tokenizer, 120)
    plain = g.generate(ids, max_new_tokens=100, speculate=False)
    spec = g.generate(ids, max_new_tokens=100, speculate=True)
    assert spec.token_ids == plain.token_ids and len(plain.token_ids) == 100
    assert spec.timings["drafted_tokens"] > 0  # random weights copy little: tests/test_real_llm.py accepts


def test_up_to_the_context_limit(gqa_bundle):
    g = open_generator(gqa_bundle("llama"), max_context=64)
    ids = [7, 8, 9, 10] * 12
    plain = g.generate(ids, max_new_tokens=50, speculate=False)
    spec = g.generate(ids, max_new_tokens=50, speculate=True)
    assert spec.token_ids == plain.token_ids and len(spec.token_ids) == 64 - len(ids)
    assert spec.stop_reason == "length"


def test_eos_and_stop_text_end_it_where_one_step_at_a_time_does(gqa_bundle):
    g = Generator.from_bundle(gqa_bundle("qwen2").root, threads=1)
    prompt = "the lights in the kitchen " * 6
    plain = g.generate(prompt, max_new_tokens=80, speculate=False)
    spec = g.generate(prompt, max_new_tokens=80, speculate=True)
    assert (spec.token_ids, spec.stop_reason) == (plain.token_ids, plain.stop_reason)
    cut = plain.text[len(plain.text) // 2 :][:3]
    if cut.strip():
        a = g.generate(prompt, max_new_tokens=80, stop=[cut], speculate=False)
        b = g.generate(prompt, max_new_tokens=80, stop=[cut], speculate=True)
        assert (a.text, a.stop_reason) == (b.text, b.stop_reason) == (a.text, "stop")


def test_default_is_on_where_passes_agree_and_sampling_never_speculates(gqa_bundle):
    g = open_generator(gqa_bundle("llama"))
    assert g.speculates(None)  # float32: a pass over several tokens rounds as one-token steps do
    assert g.speculates(False) is False
    sampled = g.generate([5, 6, 7, 5, 6, 7, 5, 6], max_new_tokens=8, temperature=0.8, seed=1)
    assert sampled.timings["speculative"] is False
    g._rows_agree = False  # as an int4 model with int8 activations measures (speculate.rows_agree)
    assert g.generate([5, 6, 7, 5, 6], max_new_tokens=4).timings["speculative"] is False


def test_cli_generate_json_reports_drafts_and_no_speculate_turns_it_off(gqa_bundle):
    root = gqa_bundle("llama").root
    prompt = "turn on the lights turn on the lights turn on the lights turn on"
    on = run_bundle(root, "generate", prompt, "--max-new-tokens", "40", "--json")
    off = run_bundle(root, "generate", prompt, "--max-new-tokens", "40", "--json", "--no-speculate")
    assert on.returncode == off.returncode == 0, on.stderr + off.stderr
    a, b = json.loads(on.stdout), json.loads(off.stdout)
    assert a["token_ids"] == b["token_ids"]
    assert a["timings"]["speculative"] and a["timings"]["accepted_tokens"] <= a["timings"]["drafted_tokens"]
    assert b["timings"]["speculative"] is False and "drafted_tokens" not in b["timings"]


def test_pauses_double_while_drafts_keep_missing_and_reset_on_a_hit():
    lookup = PromptLookup([1, 2, 1, 2])
    for pause in (PAUSE, 2 * PAUSE, 4 * PAUSE):
        for _ in range(MISSES_TO_PAUSE):
            lookup.update(1, 0)
        assert lookup.paused == pause
        lookup.paused = 0
    lookup.update(1, 1)
    for _ in range(MISSES_TO_PAUSE):
        lookup.update(1, 0)
    assert lookup.paused == PAUSE
