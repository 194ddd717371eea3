"""Tool calls: request checks, each family's syntax read back, streamed as deltas, half-formed text kept as text."""

from __future__ import annotations

import json

import pytest

from edgepipe.runtime.assistant.grammar import GrammarError, lark_grammar
from edgepipe.runtime.assistant.tool_stream import ToolStream
from edgepipe.runtime.assistant.tools import MAX_TOOLS, SYNTAXES, syntax_for, tool_request

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ARGS = '{"city": "Paris"}'
# What each family writes for one call, as llama.cpp's parsers read it.
WRITTEN = {
    "hermes": f'<tool_call>\n{{"name": "get_weather", "arguments": {ARGS}}}\n</tool_call>',
    "llama3": f'{{"name": "get_weather", "parameters": {ARGS}}}',
    "mistral": f'[TOOL_CALLS][{{"name": "get_weather", "arguments": {ARGS}, "id": "a1b2c3d4e"}}]',
    "deepseek": "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n"
    f"{ARGS}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
    "gpt-oss": f"<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{ARGS}<|call|>",
}


@pytest.mark.parametrize("family", sorted(WRITTEN))
def test_each_family_is_read_back(family):
    content, calls = SYNTAXES[family].split(WRITTEN[family])
    assert content == "" and [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].id.startswith("call_")


def test_text_before_a_call_and_parallel_calls():
    two = WRITTEN["hermes"] + "\n" + WRITTEN["hermes"].replace("Paris", "Oslo")
    content, calls = SYNTAXES["hermes"].split("Let me look.\n" + two)
    assert content == "Let me look." and [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Oslo"]
    assert SYNTAXES["llama3"].split('<|python_tag|>{"name": "f", "parameters": {}}')[1][0].name == "f"


@pytest.mark.parametrize(
    "text",
    [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut by max_tokens
        '<tool_call>\n{"name": "get_weather", "arguments": [1]}\n</tool_call>',  # arguments not an object
        "<tool_call>\nnot json\n</tool_call>",
        '[TOOL_CALLS][{"name": 3}]',
        "The weather is {sunny}",
    ],
)
def test_half_formed_call_text_stays_text(text):
    syntax = SYNTAXES["mistral" if text.startswith("[TOOL") else "llama3" if "{sunny}" in text else "hermes"]
    assert syntax.split(text) == (text, [])


@pytest.mark.parametrize(
    ("template", "family"),
    [
        ("{% for tool in tools %}{{ tool | tojson }}{% endfor %}<tool_call>", "hermes"),
        ("<|start_header_id|>ipython<|end_header_id|>", "llama3"),
        ("{{ '[TOOL_CALLS]' }}", "mistral"),
        ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>", "deepseek"),
        ("<|channel|>commentary to=functions.", "gpt-oss"),
    ],
)
def test_the_syntax_is_picked_from_the_template(template, family):
    assert syntax_for(template).name == family
    assert syntax_for("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}") is None


def test_tool_choice_and_tools_are_checked():
    body = {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    request = tool_request(body)
    assert request.choice == "function" and request.forced and [t.name for t in request.offered()] == ["get_weather"]
    assert tool_request({"tools": [WEATHER]}).choice == "auto" and tool_request({}) is None
    bad = [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": [WEATHER] * (MAX_TOOLS + 1)}, "tools"),
    ]
    for body, param in bad:
        with pytest.raises(GrammarError) as caught:
            tool_request(body)
        assert caught.value.param == param, body


def test_every_family_has_a_forced_grammar_the_library_compiles():
    request = tool_request({"tools": [WEATHER, {**WEATHER, "function": {**WEATHER["function"], "name": "b"}}]})
    for syntax in SYNTAXES.values():
        for parallel in (True, False):
            assert lark_grammar(syntax.lark(request.offered(), parallel, json.dumps), "tools")


class _Pieces:
    """A tokenizer that decodes each id to a fixed piece of text: the streaming logic alone."""

    def __init__(self, pieces: list[str]) -> None:
        self.pieces = pieces

    def token_to_id(self, text: str) -> None:
        return None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_streamed_text_never_shows_a_call_and_ids_stay():
    pieces = [
        "Sure",
        ", ",
        "<tool",
        "_call>",
        '\n{"name": "get_weather", ',
        '"arguments": {"city": "Paris"}}',
        "\n</tool_call>",
    ]
    stream = ToolStream(_Pieces(pieces), SYNTAXES["hermes"], frozenset({"get_weather"}))
    texts, calls = [], []
    for token in range(len(pieces)):
        text, new = stream.add(token)
        texts.append(text)
        calls += new
    assert "".join(texts) == "Sure," and [c.name for c in calls] == ["get_weather"]
    rest, more, content, every = stream.finish()
    assert (rest, more, content) == ("", [], "Sure,") and every[0].id == calls[0].id


def test_a_stream_cut_mid_call_ends_as_text():
    pieces = ["<tool_call>", '\n{"name": "get_weather", "argu']
    stream = ToolStream(_Pieces(pieces), SYNTAXES["hermes"], frozenset({"get_weather"}))
    assert [stream.add(t) for t in range(2)] == [("", []), ("", [])]
    rest, more, content, every = stream.finish()
    assert rest == content == "".join(pieces) and every == []
