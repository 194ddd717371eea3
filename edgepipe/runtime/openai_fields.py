"""Which fields of OpenAI's requests ``serve`` knows, and the choices and logprobs it honours.

Nothing is silently ignored: a field this server does not know is a 400 naming it, and a field
it knows but cannot honour is a 400 unless it asks for nothing (``presence_penalty: 0``). ``n``
choices are generated one after another (not streamed); ``logprobs`` are the model's own
log-probabilities (the raw logits, before temperature or truncation), not streamed.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from .http.json_body import RequestError

_SAMPLING = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options"}
_BOTH = _SAMPLING | {"n", "logprobs", "presence_penalty", "frequency_penalty", "user", "logit_bias"}
CHAT_FIELDS = _BOTH | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "chat_template_kwargs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "functions",
    "function_call",
    "metadata",
    "store",
}
COMPLETION_FIELDS = _BOTH | {"prompt", "echo", "suffix", "best_of"}
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
MAX_CHOICES = 8
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat; /v1/completions' logprobs allows 5


def _bad(param: str, message: str) -> RequestError:
    return RequestError(HTTPStatus.BAD_REQUEST, message, param=param)


def check_known(body: dict[str, Any], known: frozenset[str] | set[str], path: str) -> None:
    unknown = sorted(body.keys() - known)
    if unknown:
        raise _bad(unknown[0], f"unknown field {unknown[0]!r} for {path}: this server does not know it")


def check_asks_nothing(body: dict[str, Any]) -> None:
    """Fields a bundle cannot honour are accepted only with the value that asks for nothing (``tools``,
    ``tool_choice``, ``parallel_tool_calls`` and ``response_format`` are checked in assistant/structured.py)."""
    neutral: dict[str, tuple[Any, ...]] = {
        "best_of": (1,),
        "presence_penalty": (0,),
        "frequency_penalty": (0,),
        "echo": (False,),
        "suffix": ("",),
        "functions": ([],),
        "logit_bias": ({},),
        "store": (False,),
    }
    for name, allowed in neutral.items():
        value = body.get(name)
        if value is not None and not any(value == a and type(value) is type(a) for a in allowed):
            shown = " or ".join(repr(a) for a in allowed)
            raise _bad(name, f'"{name}" other than {shown} is not supported by this server')
    for name in ("user",):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise _bad(name, f'"{name}" must be a string')


def choices_and_logprobs(body: dict[str, Any], chat: bool, stream: bool) -> tuple[int, int | None]:
    """(n, the number of alternatives per token or None for no logprobs)."""
    n = body.get("n")
    if n is None:
        n = 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise _bad("n", f'"n" must be an integer from 1 to {MAX_CHOICES}')
    if n > 1 and stream:
        raise _bad("n", '"n" > 1 with "stream" is not supported by this server: stream one choice, or ask without')
    wanted, top = body.get("logprobs"), body.get("top_logprobs")
    if chat:
        if wanted is not None and not isinstance(wanted, bool):
            raise _bad("logprobs", '"logprobs" must be true or false')
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise _bad("top_logprobs", f'"top_logprobs" must be an integer from 0 to {MAX_TOP_LOGPROBS}')
        if top is not None and not wanted:
            raise _bad("top_logprobs", '"top_logprobs" needs "logprobs": true')
        alternatives = (top or 0) if wanted else None
    else:
        if wanted is not None and (isinstance(wanted, bool) or not isinstance(wanted, int) or not 0 <= wanted <= 5):
            raise _bad("logprobs", '"logprobs" must be an integer from 0 to 5')
        alternatives = wanted
    if alternatives is not None and stream:
        raise _bad("logprobs", '"logprobs" with "stream" is not supported by this server: ask without streaming')
    return n, alternatives


def _entry(decode: Callable[[int], str], token: int, logprob: float) -> dict[str, Any]:
    text = decode(token)
    return {"token": text, "logprob": round(logprob, 6), "bytes": list(text.encode("utf-8"))}


def logprobs_document(chat: bool, scores: list[Any], decode: Callable[[int], str]) -> dict[str, Any]:
    """OpenAI's ``choices[i].logprobs`` for a generation's (id, logprob, alternatives)."""
    if chat:
        content = [
            {**_entry(decode, token, logprob), "top_logprobs": [_entry(decode, i, lp) for i, lp in top]}
            for token, logprob, top in scores
        ]
        return {"content": content, "refusal": None}
    tokens = [decode(token) for token, _, _ in scores]
    offsets, at = [], 0
    for text in tokens:
        offsets.append(at)
        at += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [round(logprob, 6) for _, logprob, _ in scores],
        "top_logprobs": [{decode(i): round(lp, 6) for i, lp in top} for _, _, top in scores],
        "text_offset": offsets,
    }
