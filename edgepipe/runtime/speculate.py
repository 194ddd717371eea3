"""Speculative decoding by prompt lookup: draft from the text so far, check the drafts in one pass.

Grounded work (a summary, an answer from retrieved text, extraction, a code edit) copies runs of
tokens from its prompt. Where the last few tokens occurred before, the tokens that followed them
there are a guess at what comes next; the model reads the current token and ``k`` guessed ones in
one multi-token pass (the prefill's) and keeps the guesses up to the first where its own greedy
choice differs, plus its choice there. The output is the greedy one; only the number of passes
changes. A pass over k + 1 tokens costs more than a one-token step, so ``k`` follows how many
guesses were kept, and drafting pauses while guesses keep missing (free chat).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The longest n-gram looked up first; 1-grams match everywhere in chat and mostly miss.
MAX_NGRAM, MIN_NGRAM = 3, 2
K_START, K_MIN, K_MAX = 4, 1, 10
# After this many passes in a row that kept no guess, drafting pauses for PAUSE steps (then tries
# again; the pause doubles up to MAX_PAUSE while it keeps missing): a pass over 1 + k tokens cost
# ~1 + 0.16k one-token steps for SmolLM2-135M int4 on this host, so a miss is not free.
MISSES_TO_PAUSE, PAUSE, MAX_PAUSE = 2, 16, 128
# rows_agree's probe: token ids every vocabulary has (a prompt of 8, then 3 checked tokens).
PROBE_PREFIX, PROBE_TOKENS = (1, 2, 3, 4, 5, 6, 7, 8), (9, 10, 11)
# Float rounding: float32 models differ by ~1e-5 between the two ways, int8-activation ones by ~1.
ROWS_ATOL = 1e-3


@dataclass
class DraftStats:
    """What speculation did in one generation: passes that checked drafts, tokens drafted, kept."""

    passes: int = 0
    drafted: int = 0
    accepted: int = 0

    def to_json(self) -> dict[str, int | float]:
        rate = round(self.accepted / self.drafted, 4) if self.drafted else 0.0
        return {
            "draft_passes": self.passes,
            "drafted_tokens": self.drafted,
            "accepted_tokens": self.accepted,
            "acceptance": rate,
        }


class PromptLookup:
    """Drafts the tokens that followed the latest earlier occurrence of the text's last n-gram."""

    def __init__(self, tokens: list[int], max_ngram: int = MAX_NGRAM, min_ngram: int = MIN_NGRAM) -> None:
        self.tokens: list[int] = []
        self.sizes = range(max_ngram, min_ngram - 1, -1)
        # n-gram -> the position right after its latest occurrence whose next token is known.
        self.index: dict[tuple[int, ...], int] = {}
        self.k, self.misses, self.paused, self.pause = K_START, 0, 0, PAUSE
        self.stats = DraftStats()
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        """The text grows by ``token``: n-grams ending just before it now have a known successor."""
        tokens, end = self.tokens, len(self.tokens)
        for n in self.sizes:
            if end >= n:
                self.index[tuple(tokens[end - n : end])] = end
        tokens.append(token)

    def draft(self, room: int) -> list[int]:
        """Up to ``room`` tokens (and the current k) guessed to follow the text; [] for none."""
        if self.paused:
            self.paused -= 1
            return []
        limit = min(self.k, room)
        if limit < 1:
            return []
        tokens, end = self.tokens, len(self.tokens)
        for n in self.sizes:
            if end < n:
                continue
            start = self.index.get(tuple(tokens[end - n : end]))
            if start is not None:
                return tokens[start : min(start + limit, end)]
        return []

    def update(self, drafted: int, accepted: int) -> None:
        """One pass checked ``drafted`` guesses and kept ``accepted``: adapt k, pause on misses."""
        stats = self.stats
        stats.passes, stats.drafted, stats.accepted = (
            stats.passes + 1,
            stats.drafted + drafted,
            stats.accepted + accepted,
        )
        if accepted == drafted:
            self.k = min(K_MAX, self.k + 2)
        elif accepted == 0:
            self.k = max(K_MIN, self.k // 2)
        else:
            self.k = max(K_MIN, accepted + 1)
        self.misses = self.misses + 1 if accepted == 0 else 0
        if accepted:
            self.pause = PAUSE
        elif self.misses >= MISSES_TO_PAUSE:  # each pause in a row twice the last: chat drafts little
            self.misses, self.paused, self.pause = 0, self.pause, min(MAX_PAUSE, 2 * self.pause)


def rows_agree(probe: Callable[[list[int], list[int], bool], np.ndarray], max_context: int) -> bool:
    """Whether ``probe(prefix, tokens, together)`` gives tokens fed in one pass the logits it gives
    them fed one a step, to float rounding (ROWS_ATOL). onnxruntime's kernels round each way a little
    differently (~1e-5 in a logit for float32 SmolLM2-135M, as a chunked prefill does); with the int4
    MatMuls' int8 activations (accuracy_level 4) such a last-bit difference moves an activation's int8
    code, and SmolLM2-135M's logits moved by up to 1.4: greedy output then parts from the one-step
    output within a few dozen tokens in about half the texts (onnxruntime 1.32, this host)."""
    if max_context < len(PROBE_PREFIX) + len(PROBE_TOKENS):
        return False
    together = probe(list(PROBE_PREFIX), list(PROBE_TOKENS), True)
    alone = probe(list(PROBE_PREFIX), list(PROBE_TOKENS), False)
    return bool(np.abs(together - alone).max() <= ROWS_ATOL)
