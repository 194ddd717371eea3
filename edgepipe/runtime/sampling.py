"""Sampling the next token and streaming text: what a generation does around the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tokenizers import Tokenizer

# Top-p looks at this many of the likeliest tokens first, and 16 times more each time they hold
# less than top_p of the mass: sorting a 50k vocabulary costs ~3 ms, more than a decode step.
NUCLEUS_CANDIDATES = 256


class GenerationError(Exception):
    """A generation that cannot run as asked; the message is one line for the user."""


class OptionError(GenerationError):
    """A sampling option out of range, or one this bundle cannot honour (--chat without template)."""


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_options(
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> None:
    """OptionError naming the first option out of range."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise OptionError(f"max_new_tokens must be an integer of at least 1 (got {max_new_tokens!r})")
    if not _number(temperature) or not 0 <= temperature < float("inf"):
        raise OptionError(f"temperature must be 0 (greedy) or more (got {temperature!r})")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise OptionError(f"top_k must be an integer of at least 0, 0 for off (got {top_k!r})")
    if not _number(top_p) or not 0 < top_p <= 1:
        raise OptionError(f"top_p must be in (0, 1], 1 for off (got {top_p!r})")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise OptionError(f"seed must be an integer of at least 0 (got {seed!r})")
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise OptionError("stop strings must be a list of non-empty strings")


def token_logprobs(logits: np.ndarray, token: int, top: int) -> tuple[float, list[tuple[int, float]]]:
    """The log-probability of ``token`` under the model's distribution (the raw logits, before
    temperature or truncation, as OpenAI's logprobs are) and the ``top`` likeliest (id, logprob)."""
    x = np.asarray(logits, dtype=np.float64)
    shifted = x - x.max()
    logprobs = shifted - np.log(np.exp(shifted).sum())
    best = np.argpartition(-logprobs, top - 1)[:top] if top else np.empty(0, dtype=np.int64)
    best = best[np.argsort(-logprobs[best], kind="stable")]
    return float(logprobs[token]), [(int(i), float(logprobs[i])) for i in best]


class Sampler:
    """Picks the next token from one row of logits: greedy, or temperature then top-k then top-p."""

    def __init__(self, temperature: float, top_k: int, top_p: float, seed: int | None) -> None:
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature == 0 or self.top_k == 1:
            return int(logits.argmax())
        ids, probs = self.candidates(logits)
        cumulative = np.cumsum(probs)
        pick = int(np.searchsorted(cumulative, self.rng.random() * cumulative[-1], side="right"))
        return int(ids[min(pick, len(ids) - 1)])

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ids sampling picks from, likeliest first, and their probabilities (summing to 1)."""
        vocab = logits.shape[-1]
        k = self.top_k if 0 < self.top_k < vocab else vocab
        # float32 throughout, as transformers computes it: float64 exp and sorts of a whole
        # vocabulary cost milliseconds a token.
        scaled = np.asarray(logits, dtype=np.float32) / np.float32(self.temperature)
        if self.top_p >= 1:
            ids, probs = self._top(scaled, k)
            return ids, probs / probs.sum()
        total = self._mass(scaled, k)
        tried = min(k, NUCLEUS_CANDIDATES)
        while True:
            ids, probs = self._top(scaled, tried)
            if tried == k:
                total = probs.sum()
                break
            if probs.sum() >= self.top_p * total:  # the nucleus is among these candidates
                break
            tried = min(k, tried * 16)
        # Transformers' rule: keep the likeliest tokens until their mass reaches top_p.
        keep = int(np.searchsorted(np.cumsum(probs / total), self.top_p)) + 1
        ids, probs = ids[:keep], probs[:keep]
        return ids, probs / probs.sum()

    @staticmethod
    def _top(scaled: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k likeliest ids, likeliest first, with probabilities relative to the likeliest."""
        ids = np.argpartition(scaled, -k)[-k:] if k < scaled.shape[-1] else np.arange(k)
        ids = ids[np.argsort(-scaled[ids])]
        top = scaled[ids]
        return ids, np.exp(top - top[0]).astype(np.float64)

    @staticmethod
    def _mass(scaled: np.ndarray, k: int) -> float:
        """The k likeliest tokens' probability mass, relative to the likeliest token's."""
        top = np.partition(scaled, -k)[-k:] if k < scaled.shape[-1] else scaled
        return float(np.exp(top - top.max()).sum(dtype=np.float64))


class TextStream:
    """Turns generated ids into text a piece at a time: only stable text, never a stop string.

    Text is decoded over a short window of ids so that a decoder that treats the first token
    specially (SentencePiece's leading space) reads the same as a decode of the whole; a piece
    that ends in an incomplete UTF-8 sequence (U+FFFD) waits for the next token. Text that could
    be the start of a stop string is held back until it is known not to be one.
    """

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str], on_text: Callable[[str], None] | None) -> None:
        self.tokenizer, self.stop, self.on_text = tokenizer, list(stop), on_text
        self.ids: list[int] = []
        self.prefix, self.read = 0, 0  # the window: ids[prefix:read] are already in self.text
        self.text, self.emitted = "", 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token: int) -> bool:
        """Take one token; True when the text now holds a stop string (the text is cut before it)."""
        if self.stopped:
            return True
        self.ids.append(token)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False
        self._append(after[len(before) :])
        self.prefix, self.read = self.read, len(self.ids)
        return self.stopped

    def _append(self, piece: str) -> None:
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0) + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.stopped = self.text[: min(hits)], True
            return
        self._emit(len(self.text) - self._held_back())

    def _held_back(self) -> int:
        """Length of the longest end of the text that a stop string starts with."""
        for size in range(min(len(self.text), max((len(s) for s in self.stop), default=1) - 1), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self.stop):
                return size
        return 0

    def _emit(self, upto: int) -> None:
        if upto > self.emitted:
            if self.on_text is not None:
                self.on_text(self.text[self.emitted : upto])
            self.emitted = upto

    def finish(self) -> str:
        """The whole text: whatever the window still holds, then everything not yet emitted."""
        if not self.stopped:
            before = self._decode(self.ids[self.prefix : self.read])
            after = self._decode(self.ids[self.prefix :])
            if len(after) > len(before):
                self._append(after[len(before) :])
        self._emit(len(self.text))
        return self.text
