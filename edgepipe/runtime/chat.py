"""Multi-turn chat prompts without Jinja: the model's chat template as per-role text, checked at build.

The build (``edgepipe.tasks.decoder_runtime``) renders the template with transformers around marker
messages, cuts out what comes before and after each role's content, and keeps the result only if
it renders a set of conversations exactly as ``apply_chat_template`` does. The runtime then joins
strings: ``head``, each message as ``prefix + content + suffix``, then the generation prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "user", "assistant")
# How a template treats a system message: its own turn, folded into the first user message's
# content, or not at all (the template raises or drops it).
SYSTEM_TURN, SYSTEM_FOLD, SYSTEM_NONE = "turn", "fold", "none"


class ChatError(Exception):
    """A conversation this template cannot render as the model's own template would (one line)."""


@dataclass(frozen=True)
class ChatTemplate:
    """The text around each message that the model's chat template writes."""

    head: str  # before the first message when it is not a system turn (a BOS, a default system)
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation_prompt: str
    system_mode: str = SYSTEM_NONE
    # turn: (everything before the content, head included; the suffix). fold: the text written
    # before and after the system content at the start of the first user message's content.
    system: tuple[str, str] = ("", "")
    trim: tuple[str, ...] = ()  # roles whose content the template strips of surrounding whitespace

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatTemplate:
        try:
            return cls(
                head=str(data["head"]),
                user=_pair(data["user"]),
                assistant=_pair(data["assistant"]),
                generation_prompt=str(data["generation_prompt"]),
                system_mode=str(data.get("system_mode", SYSTEM_NONE)),
                system=_pair(data.get("system", ["", ""])),
                trim=tuple(str(r) for r in data.get("trim", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ChatError(f"runtime.json's chat_template is malformed: {exc!r}") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "user": list(self.user),
            "assistant": list(self.assistant),
            "generation_prompt": self.generation_prompt,
            "system_mode": self.system_mode,
            "system": list(self.system),
            "trim": list(self.trim),
        }

    def _content(self, role: str, content: str) -> str:
        return content.strip() if role in self.trim else content

    def render(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt text for ``(role, content)`` messages, as the model's template writes it.

        The build checked conversations of an optional system message, then user and assistant
        turns alternating from a user turn; anything else is refused rather than guessed.
        """
        messages = list(messages)
        system: str | None = None
        if messages and messages[0][0] == "system":
            system = self._content("system", messages.pop(0)[1])
            if self.system_mode == SYSTEM_NONE:
                raise ChatError("this model's chat template has no system role")
        for number, (role, _) in enumerate(messages):
            expected = "user" if number % 2 == 0 else "assistant"
            if role != expected:
                raise ChatError(
                    f"message {number + (system is not None)} is {role!r} where {expected!r} "
                    "belongs: after an optional first system message, user and assistant turns "
                    "alternate, from a user turn"
                )
        if not messages or (add_generation_prompt and messages[-1][0] != "user"):
            raise ChatError("the conversation must end with a user message")
        parts: list[str] = []
        if system is not None and self.system_mode == SYSTEM_TURN:
            parts += [self.system[0], system, self.system[1]]
        else:
            parts.append(self.head)
        for number, (role, content) in enumerate(messages):
            prefix, suffix = self.user if role == "user" else self.assistant
            text = self._content(role, content)
            if number == 0 and system is not None and self.system_mode == SYSTEM_FOLD:
                text = self.system[0] + system + self.system[1] + text
            parts += [prefix, text, suffix]
        if add_generation_prompt:
            parts.append(self.generation_prompt)
        return "".join(parts)


def _pair(value: object) -> tuple[str, str]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"expected [prefix, suffix], got {value!r}")
    return str(value[0]), str(value[1])
