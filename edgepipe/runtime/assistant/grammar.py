"""Grammar-constrained decoding: a JSON schema (or a tool call's syntax around one) enforced token by token.

llguidance (the library llama.cpp and vLLM use) compiles the grammar and computes, before each step, which
tokens of the bundle's own tokenizer may come next; the generator sets every other token's logit to -inf, so
what comes out parses and validates whatever the weights are. Measured against xgrammar (its wheel requires
torch and transformers) and outlines-core (a regex per schema, exponential in nesting) in docs/assistants.md.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# A schema document larger or deeper than this is refused before the library sees it: compile time grows
# with size (a 125 kB schema of 5,000 properties took 1.4 s), and nesting beyond this is no real schema.
MAX_SCHEMA_BYTES = 32 * 1024
MAX_SCHEMA_DEPTH = 40
# Within this many tokens of max_tokens the constraint plans the JSON's close (see Constraint).
CLOSE_HORIZON = 96
CLOSE_MARGIN = 12
# Matchers kept ready per vocabulary, by grammar (a few hundred kB each at most).
MATCHERS_KEPT = 32
# Tokens of the closing policy played at the start to find a grammar the library gives up on at once.
START_CHECK = 4


class GrammarError(ValueError):
    """A schema or grammar this server cannot enforce: one line, with the request field it came from."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a bundle installed without its requirements
        raise GrammarError(
            "structured output needs the llguidance package: pip install the bundle's requirements.txt",
            "response_format",
        ) from None
    return llguidance


def _limits() -> Any:
    # Bounded per step so that no schema can stall a request: ~14k lexer fuel and ~20k Earley items a ms.
    return _llguidance().LLParserLimits(
        step_lexer_fuel=200_000, step_max_items=50_000, max_grammar_size=200_000, verbose_errors=False
    )


def check_document(schema: object, param: str) -> dict[str, Any]:
    """``schema`` when it is a JSON object within the size and depth this server takes; else GrammarError."""
    if not isinstance(schema, dict):
        raise GrammarError(f"{param} must be a JSON Schema object, not {type(schema).__name__}", param)
    stack: list[tuple[object, int]] = [(schema, 1)]
    while stack:  # iterative: a deep document must not exhaust the interpreter's stack
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise GrammarError(f"{param} nests deeper than {MAX_SCHEMA_DEPTH} levels", param)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_BYTES:
        raise GrammarError(f"{param} is {size} bytes; this server takes schemas of at most {MAX_SCHEMA_BYTES}", param)
    return schema


def _explain(error: str, param: str) -> GrammarError:
    error = error.strip().splitlines()[0] if error.strip() else "unknown error"
    if error.startswith("Unimplemented keys:"):
        keys = error.split(":", 1)[1].strip().strip("[]").replace('"', "")
        return GrammarError(
            f"{param} uses {keys}, which this server cannot enforce while decoding; drop it from the schema", param
        )
    return GrammarError(f"{param} is not a schema this server can enforce: {error}", param)


def closed(schema: Any) -> Any:
    """A copy of ``schema`` whose objects with ``properties`` take no others unless it says they may: what
    it generates still validates against ``schema``, and a weak model cannot wander off into made-up keys."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) if key not in ("enum", "const", "default", "examples") else value
              for key, value in schema.items()}  # fmt: skip
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


def schema_grammar(schema: object, param: str = "response_format.json_schema.schema") -> str:
    """The llguidance grammar of JSON matching ``schema`` (compact: ", " and ": " between items)."""
    schema = closed(check_document(schema, param))
    llg = _llguidance()
    options = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    try:
        grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults=options)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _explain(str(exc), param) from None
    return check_grammar(grammar, param)


def lark_grammar(lark: str, param: str) -> str:
    """The llguidance grammar of a Lark text (tool-call syntax with ``%json`` schemas inside)."""
    return check_grammar(_llguidance().LLMatcher.grammar_from_lark(lark), param)


def check_grammar(grammar: str, param: str) -> str:
    """``grammar`` when the library compiles it; else GrammarError naming what it cannot enforce."""
    llg = _llguidance()
    try:
        failed, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, None, limits=_limits())
    except (ValueError, TypeError, RecursionError) as exc:
        raise _explain(str(exc), param) from None
    if failed:
        raise _explain(messages[0] if messages else "", param)
    return grammar


class Vocabulary:
    """The bundle tokenizer as the grammar library sees it: built once per tokenizer file (~1 s), then shared."""

    _cache: dict[tuple[str, int], Vocabulary] = {}
    _lock = threading.Lock()

    def __init__(self, tokenizer_json: str, eos_token_id: int) -> None:
        self.tokenizer = _llguidance().LLTokenizer(tokenizer_json, eos_token=eos_token_id)
        self.size = self.tokenizer.vocab_size
        self.eos = eos_token_id
        self._matchers: dict[str, Any] = {}  # grammar -> its checked matcher at the start, newest last
        self._groups: tuple[np.ndarray, ...] | None = None
        self.groups()  # now, not in the first constrained request (~0.1 s for 50k tokens)

    def matcher(self, grammar: str, build: Callable[[], Any]) -> Any:
        """A copy of the grammar's checked matcher in its start state: building one (lexer, parser, checks)
        is most of a constrained request's time to first token, and clients send the same schema again."""
        with self._lock:
            pristine = self._matchers.pop(grammar, None)
        if pristine is None:
            pristine = build()
        with self._lock:
            self._matchers[grammar] = pristine  # the most recent last: the oldest goes first
            while len(self._matchers) > MATCHERS_KEPT:
                self._matchers.pop(next(iter(self._matchers)))
        return pristine.deep_copy()

    @classmethod
    def of(cls, path: Path, eos_token_id: int) -> Vocabulary:
        key = (str(path), eos_token_id)
        with cls._lock:
            if key not in cls._cache:
                cls._cache[key] = cls(path.read_text(encoding="utf-8"), eos_token_id)
            return cls._cache[key]

    def groups(self) -> tuple[np.ndarray, ...]:
        """Bool per token: a quote ('"', '"}', ...), closing brackets (']', '}}', ...), a comma, a letter."""
        if self._groups is None:
            quote, brace, comma, letter = (np.zeros(self.size, dtype=bool) for _ in range(4))
            for token in range(self.size):
                if self.tokenizer.is_special_token(token):
                    continue
                text = self.tokenizer.decode_bytes([token]).decode("utf-8", "replace")
                quote[token] = re.fullmatch(r'"[\]}]*', text) is not None
                brace[token] = re.fullmatch(r"[\]}]+", text) is not None
                comma[token] = re.fullmatch(r", ?", text) is not None
                letter[token] = len(text) == 1 and text.isalpha()
            self._groups = quote, brace, comma, letter
        return self._groups


class Constraint:
    """One generation's grammar state: masks each step's logits, then follows the token sampled from them.

    Near the end of the token budget it closes the JSON rather than let max_tokens cut it: within
    CLOSE_HORIZON tokens of the end it plays the closing policy out on a copy of the matcher (every few
    steps) to learn how many tokens the close takes, and once only that many are left it writes the close
    (a string's quote, closing brackets, the next required member, the end). A close longer than the
    horizon is not attempted: the answer is cut and says so ("length"), as OpenAI's API does.
    """

    def __init__(self, vocabulary: Vocabulary, grammar: str, param: str = "response_format") -> None:
        self.vocabulary = vocabulary
        self._bits = np.full((vocabulary.size + 31) // 32, -1, dtype=np.int32)
        self.matcher = vocabulary.matcher(grammar, lambda: self._fresh(grammar, param))
        self._close: int | None = None  # tokens the close took when last played out
        self._played = 0  # the budget left then
        self.closing = False

    def _fresh(self, grammar: str, param: str) -> Any:
        """A new matcher of ``grammar``, checked (GrammarError where the library cannot take it)."""
        self.matcher = _llguidance().LLMatcher(self.vocabulary.tokenizer, grammar, log_level=0, limits=_limits())
        if self.matcher.is_error():
            raise _explain(self.matcher.get_error(), param)
        self._check_start(param)
        return self.matcher

    def _check_start(self, param: str) -> None:
        """GrammarError where the library gives up within the first tokens (a schema that recurses without end
        makes its parser explode at the first "{"): a 400 before the answer starts, not a broken one."""
        copy = self.matcher.deep_copy()
        for _ in range(START_CHECK):
            token = self._close_token(self._allowed(copy))
            if copy.is_error() or token is None or token == self.vocabulary.eos or not copy.consume_token(token):
                break
        if copy.is_error():
            raise GrammarError(f"{param}: the grammar library gives up on it: {copy.get_error()}", param)

    def _allowed(self, matcher: Any) -> np.ndarray:
        matcher.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        return np.unpackbits(self._bits.view(np.uint8), bitorder="little")[: self.vocabulary.size].astype(bool)

    def allowed(self) -> np.ndarray:
        """A bool per token of the vocabulary: may it come next?"""
        return self._allowed(self.matcher)

    def mask(self, logits: np.ndarray, remaining: int | None = None) -> np.ndarray:
        """``logits`` with every token the grammar forbids at -inf (closing: all but the close's next)."""
        allowed = self.allowed()
        if remaining is not None and self._must_close(remaining):
            token = self._close_token(allowed)
            if token is not None:
                allowed = np.zeros_like(allowed)
                allowed[token] = True
        vocab = logits.shape[-1]
        keep = np.zeros(vocab, dtype=bool)
        keep[: min(vocab, allowed.size)] = allowed[:vocab]
        if not keep.any():  # the matcher failed (a limit hit mid-way): only the end token remains
            keep[min(self.vocabulary.eos, vocab - 1)] = True
        return np.where(keep, logits, np.float32(-np.inf)).astype(logits.dtype, copy=False)

    def _must_close(self, remaining: int) -> bool:
        if self.closing or remaining > CLOSE_HORIZON:
            return self.closing
        # Played out again every 4 steps, and every step near the end: a model going deeper lengthens the close.
        every = 1 if self._close is not None and remaining <= self._close + CLOSE_MARGIN + 4 else 4
        if not self._played or self._played - remaining >= every:
            self._close, self._played = self._play_close(CLOSE_HORIZON), remaining
        # The margin: one token of the model's can lengthen the close by more than one (an object opened
        # where every member is required), so closing starts before the last possible moment.
        self.closing = self._close is not None and remaining <= self._close + CLOSE_MARGIN
        return self.closing

    def _play_close(self, limit: int) -> int | None:
        """How many tokens the closing policy takes from here to the end (None: more than ``limit``)."""
        copy = self.matcher.deep_copy()
        for used in range(limit):
            if copy.is_stopped():
                return used
            token = self._close_token(self._allowed(copy))
            if token is None or token == self.vocabulary.eos:
                return used + 1 if token is not None else None
            if not copy.consume_token(token):
                return None
        return None

    def _close_token(self, allowed: np.ndarray) -> int | None:
        """The token that closes the JSON soonest: the end where allowed; in a string its closing quote;
        else closing brackets, a comma to the next required member, a quote to open a (short) string;
        else the first allowed. In a group, the lowest id: a vocabulary's single characters come first."""
        if allowed[self.vocabulary.eos]:
            return self.vocabulary.eos
        quote, brace, comma, letter = self.vocabulary.groups()
        inside_string = np.count_nonzero(allowed & letter) > 4  # a number takes "e", a literal its next letter
        for group in (quote,) if inside_string else (brace, comma, quote):
            hits = np.flatnonzero(allowed & group)
            if hits.size:
                return int(hits[0])
        hits = np.flatnonzero(allowed)
        return int(hits[0]) if hits.size else None

    def advance(self, token: int) -> None:
        """Follow the sampled token (the end token included)."""
        self.matcher.consume_token(token)

    @property
    def stopped(self) -> bool:
        """True when the grammar is complete and admits nothing more."""
        return bool(self.matcher.is_stopped())

    @property
    def accepting(self) -> bool:
        """True when what was generated so far is a complete answer."""
        return bool(self.matcher.is_accepting())

    @property
    def error(self) -> str:
        return str(self.matcher.get_error())
