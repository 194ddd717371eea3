"""A generated answer cut into text and tool calls as it is generated, for streaming and for the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .tools import MARKER_TOKENS, ToolCall, ToolSyntax


def marker_ids(tokenizer: Any, syntax: ToolSyntax) -> dict[int, str]:
    """The ids of the syntax's marker tokens that the vocabulary has as special tokens (decoding drops those)."""
    ids = {}
    for marker in MARKER_TOKENS[syntax.name]:
        token = tokenizer.token_to_id(marker)
        if token is not None:
            ids[token] = marker
    return ids


def decode_keeping(tokenizer: Any, ids: list[int], keep: dict[int, str]) -> str:
    """``ids`` as text, special tokens dropped except those in ``keep``, which are written out."""
    parts: list[str] = []
    run: list[int] = []
    for token in ids:
        if token in keep:
            parts.append(tokenizer.decode(run, skip_special_tokens=True) if run else "")
            parts.append(keep[token])
            run = []
        else:
            run.append(token)
    parts.append(tokenizer.decode(run, skip_special_tokens=True) if run else "")
    return "".join(parts)


@dataclass
class ToolStream:
    """Takes the answer's tokens one at a time; hands out text that is surely not a call, and whole calls."""

    tokenizer: Any
    syntax: ToolSyntax
    allowed: frozenset[str]  # the names of the request's tools: a call to another is text
    ids: list[int] = field(default_factory=list)
    sent_text: int = 0  # characters of text already handed out
    sent: list[ToolCall] = field(default_factory=list)  # the calls already handed out

    def __post_init__(self) -> None:
        self.keep = marker_ids(self.tokenizer, self.syntax)

    def text(self) -> str:
        return decode_keeping(self.tokenizer, self.ids, self.keep)

    def add(self, token: int) -> tuple[str, list[ToolCall]]:
        """The new text to stream and the calls completed by ``token``."""
        self.ids.append(token)
        text = self.text()
        if text.endswith("\ufffd"):  # a character cut between tokens: wait for the rest
            return "", []
        start = self.syntax.start(text)
        if start is None:
            upto = len(text) - self.syntax.held(text)
            return self._text(text, len(text[:upto].rstrip())), []  # blanks wait: a call may follow them
        piece = self._text(text, len(text[:start].rstrip()))
        parsed = self.syntax.parse_calls(text[start:].strip())
        calls = [c for c in parsed[0] if c.name in self.allowed] if parsed else []
        return piece, self._calls(calls)

    def _text(self, text: str, upto: int) -> str:
        if upto <= self.sent_text:
            return ""
        piece, self.sent_text = text[self.sent_text : upto], upto
        return piece

    def _calls(self, calls: list[ToolCall]) -> list[ToolCall]:
        new = calls[len(self.sent) :]
        self.sent.extend(new)
        return new

    def finish(self) -> tuple[str, list[ToolCall], str, list[ToolCall]]:
        """The text and calls not yet handed out, then the whole answer's text and calls."""
        text = self.text()
        content, calls = self.syntax.split(text)
        calls = [c for c in calls if c.name in self.allowed]
        if not calls:  # no whole call: the answer is all text, half-formed call text included
            content = text
        calls = self.sent + calls[len(self.sent) :]  # the ids already streamed stay
        new = calls[len(self.sent) :]
        self.sent = list(calls)
        rest = content[self.sent_text :] if len(content) > self.sent_text else ""
        self.sent_text = max(self.sent_text, len(content))
        return rest, new, content, calls
