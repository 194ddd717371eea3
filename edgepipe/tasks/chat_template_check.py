"""The build's check of a decoder's chat template: the bundle's renderer against transformers'.

The bundle renders the model's own template with jinja2 at request time (runtime/assistant/
template.py). Before it ships, the build renders a set of conversations both ways: a system
prompt, several turns, reasoning in the history, tools, a tool call and its result, awkward
contents. Each must give the same text as ``apply_chat_template``, or raise in both; a template
that reaches past the sandbox or runs past its bounds is refused.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..errors import ModelError
from ..runtime.assistant.template import ChatTemplate, TemplateError, TemplateRefused
from ..stages.export import quiet

log = logging.getLogger(__name__)

_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
_LIGHTS = {
    "type": "function",
    "function": {
        "name": "set_lights",
        "description": "Switch the lights of a room.",
        "parameters": {
            "type": "object",
            "properties": {"room": {"type": "string"}, "on": {"type": "boolean"}},
            "required": ["room", "on"],
        },
    },
}
_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
_THOUGHT = "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"

# (name, messages, tools, template variables)
CHECKS: list[tuple[str, list[dict[str, Any]], list[dict[str, Any]] | None, dict[str, Any]]] = [
    ("one user message", [{"role": "user", "content": "Hello there!"}], None, {}),
    (
        "system prompt",
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": " Two\nlines,  spaces "}],
        None,
        {},
    ),
    (
        "several turns",
        [
            {"role": "user", "content": "<b>ünïcødé</b> {{ x }}"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "And again?"},
            {"role": "assistant", "content": " Sure.\n"},
            {"role": "user", "content": ""},
        ],
        None,
        {},
    ),
    (
        "reasoning in the history",
        [
            {"role": "system", "content": "Think first."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": _THOUGHT},
            {"role": "user", "content": "What is 2+2?"},
        ],
        None,
        {},
    ),
    ("thinking off", [{"role": "user", "content": "Hi"}], None, {"enable_thinking": False}),
    (
        "tools",
        [{"role": "system", "content": "You run a house."}, {"role": "user", "content": "Lights on?"}],
        [_WEATHER, _LIGHTS],
        {},
    ),
    (
        "tool call and result",
        [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [_CALL]},
            {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": '{"temperature": 21}'},
        ],
        [_WEATHER],
        {},
    ),
]


def _expected(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, kwargs: dict[str, Any]) -> str | Exception:
    try:
        with quiet():
            rendered = tokenizer.apply_chat_template(
                messages, tools=tools, tokenize=False, add_generation_prompt=True, **kwargs
            )
    except Exception as exc:  # noqa: BLE001 - the template's raise_exception() or a Jinja error
        return exc
    return rendered if isinstance(rendered, str) else TypeError("apply_chat_template returned no text")


def check(tokenizer: Any, template: ChatTemplate, where: str) -> str | None:
    """None when every check conversation renders as transformers renders it, else why chat is off.

    ModelError for a template the sandbox refuses or whose render runs past its bounds.
    """
    agreed = 0
    for name, messages, tools, kwargs in CHECKS:
        try:  # the bundle's bounded renderer first: transformers' would hang on a looping template
            got: str | Exception = template.render(messages, tools=tools, **kwargs)
        except TemplateRefused as exc:
            raise ModelError(f"{where}: the chat template is refused: {exc}") from None
        except TemplateError as exc:
            got = exc
        expected = _expected(tokenizer, messages, tools, kwargs)
        if isinstance(expected, Exception) or isinstance(got, Exception):
            if isinstance(expected, Exception) and isinstance(got, Exception):
                continue  # the template refuses this conversation either way: a 400 at request time
            said = got if isinstance(got, Exception) else expected
            return f"the chat template renders {name!r} differently from transformers: {said}"[:300]
        if got != expected:
            at = len(os.path.commonprefix([got, expected]))
            return (
                f"the chat template renders {name!r} differently from transformers at character {at} "
                f"({expected[at : at + 20]!r} expected, {got[at : at + 20]!r} rendered)"
            )
        agreed += 1
    if not agreed:
        return "the chat template renders none of the check conversations"
    return None
