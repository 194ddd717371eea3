"""A reply's thinking apart from its answer: ``<think>...</think>`` (DeepSeek-R1 distills, Qwen3).

The template says which models think: one that mentions ``</think>`` (it strips earlier turns'
thinking) marks a model that writes it. Whether a reply starts inside the thinking is read from
the rendered prompt: R1 distills' ends with ``<think>\\n`` (the model goes on thinking), Qwen3's
ends with ``<think>\\n\\n</think>\\n\\n`` when ``enable_thinking`` is false (no thinking), and
otherwise the model opens ``<think>`` itself.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"
REASONING, CONTENT = "reasoning", "content"


def thinks(template: str) -> bool:
    """Whether a model with this chat template writes its thinking between think tags."""
    return CLOSE in template


class ReasoningSplitter:
    """Splits a reply, whole or a piece at a time, into (REASONING | CONTENT, text) pieces.

    Text that may be the start of a tag is held back until the next piece says what it is.
    """

    def __init__(self, prompt: str) -> None:
        tail = prompt.rstrip()
        self.state = REASONING if tail.endswith(OPEN) else "start"  # "start": an OPEN may come
        self.opened = self.state == REASONING
        self.lead = True  # nothing of the reasoning sent yet: its leading whitespace is dropped
        self.after_close = False
        self.held = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.held += text
        pieces: list[tuple[str, str]] = []
        while True:
            if self.state == "start":
                stripped = self.held.lstrip()
                if stripped.startswith(OPEN):
                    self.held, self.state, self.opened = stripped[len(OPEN) :], REASONING, True
                    continue
                if OPEN.startswith(stripped):  # empty, whitespace or a part of the tag so far
                    return pieces
                self.state = CONTENT
            if self.state == CONTENT:
                if self.after_close:  # the blank lines between the thinking and the answer
                    self.held = self.held.lstrip()
                    self.after_close = not self.held
                if self.held:
                    pieces.append((CONTENT, self.held))
                self.held = ""
                return pieces
            if self.lead:
                self.held = self.held.lstrip()
            at = self.held.find(CLOSE)
            if at >= 0:
                if self.held[:at].rstrip():
                    pieces.append((REASONING, self.held[:at].rstrip()))
                self.held, self.state, self.after_close = self.held[at + len(CLOSE) :], CONTENT, True
                continue
            # Held back: a part of CLOSE at the end, and whitespace that may come right before it.
            keep = _partial(self.held, CLOSE)
            body = self.held[: len(self.held) - keep]
            send = body.rstrip()
            if send:
                pieces.append((REASONING, send))
                self.lead = False
            self.held = self.held[len(send) :]
            return pieces

    def finish(self) -> list[tuple[str, str]]:
        """What is held back, once the reply is complete."""
        held, self.held = self.held, ""
        if self.state == REASONING:
            held = held.strip() if self.lead else held.rstrip()
        if not held:
            return []
        return [(CONTENT if self.state == "start" else self.state, held)]


def _partial(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that ``tag`` starts with."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def split(prompt: str, reply: str) -> tuple[str | None, str]:
    """(reasoning or None, content) of a whole reply."""
    splitter = ReasoningSplitter(prompt)
    pieces = splitter.feed(reply) + splitter.finish()
    reasoning = "".join(t for k, t in pieces if k == REASONING)
    content = "".join(t for k, t in pieces if k == CONTENT)
    return (reasoning if splitter.opened else None), content
