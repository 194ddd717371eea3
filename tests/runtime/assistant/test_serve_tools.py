"""Tool calls through `serve` with the real `openai` client and LangChain, on a random-weight Qwen2 (Hermes syntax).

Random weights never choose to call a tool, so `auto` answers in text; a forced call (`required`, a named
function) is decoded under the call's grammar, so its arguments validate against the tool's schema anyway.
"""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from serving import request

LIGHT = {
    "type": "function",
    "function": {
        "name": "set_light",
        "description": "Switch a room's light",
        "parameters": {
            "type": "object",
            "properties": {
                "room": {"enum": ["kitchen", "hall"]},
                "on": {"type": "boolean"},
                "level": {"type": "integer"},
            },
            "required": ["room", "on"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOLS = [LIGHT, WEATHER]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "Kitchen lights on, please"}]


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def valid(call) -> dict:
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, SCHEMAS[call.function.name])
    return arguments


def test_round_trip_call_result_answer(tools_server):
    api = client(tools_server)
    first = api.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=300)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        valid(call)
        assert call.id.startswith("call_") and call.type == "function"
    messages = [*ASK, choice.message.model_dump(exclude_none=True)]
    messages += [{"role": "tool", "tool_call_id": c.id, "content": '{"ok": true}'} for c in choice.message.tool_calls]
    answer = api.chat.completions.create(model="tiny", messages=messages, tools=TOOLS, max_tokens=20, temperature=0)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.tool_calls is None
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


@pytest.mark.parametrize("seed", range(4))
def test_a_named_call_always_validates_even_sampled(tools_server, seed):
    choice = {"type": "function", "function": {"name": "set_light"}}
    reply = client(tools_server).chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False,
        temperature=1.2, seed=seed, max_tokens=300,
    )  # fmt: skip
    calls = reply.choices[0].message.tool_calls
    assert reply.choices[0].finish_reason == "tool_calls" and [c.function.name for c in calls] == ["set_light"]
    assert valid(calls[0])["room"] in ("kitchen", "hall")


def test_streamed_calls_equal_the_whole_answer(tools_server):
    api = client(tools_server)
    kwargs = dict(model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=300)
    whole = api.chat.completions.create(**kwargs).choices[0]
    chunks = list(api.chat.completions.create(**kwargs, stream=True))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"name": "", "arguments": ""})
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    expected = [{"name": c.function.name, "arguments": c.function.arguments} for c in whole.message.tool_calls]
    assert [calls[i] for i in sorted(calls)] == expected


def test_auto_and_none_answer_in_text(tools_server):
    api = client(tools_server)
    for choice in ("auto", "none"):
        reply = api.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice=choice, temperature=0, max_tokens=16
        )
        assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason in ("stop", "length")


def test_langchain_bind_tools_and_structured_output(tools_server):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel

    model = ChatOpenAI(base_url=tools_server.url + "/v1", api_key="none", model="tiny", max_tokens=300, max_retries=0)
    message = model.bind_tools([LIGHT], tool_choice="set_light").invoke("Kitchen lights on")
    assert message.tool_calls and {c["name"] for c in message.tool_calls} == {"set_light"}  # parallel: maybe more
    for call in message.tool_calls:
        jsonschema.validate(call["args"], SCHEMAS["set_light"])

    class Light(BaseModel):
        room: str
        on: bool

    assert isinstance(model.with_structured_output(Light).invoke("Kitchen lights on"), Light)


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"tools": [LIGHT] * 2}, "tools[1].function.name", "given twice"),
        ({"tools": [{**LIGHT, "function": {**LIGHT["function"], "name": f"f{i}"}} for i in range(1000)]}, "tools",
         "1000 tools in one request; this server takes at most 128"),
        ({"tools": [{"type": "function", "function": {"name": "loop", "parameters": {
            "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}}}],
          "tool_choice": "required"}, None, None),
        ({"tools": [{"type": "function", "function": {"name": "u", "parameters": {"type": "object", "properties": {
            "x": {"type": "array", "uniqueItems": True}}}}}], "tool_choice": "required"}, "tools", "uniqueItems"),
        ({"tools": [LIGHT], "response_format": {"type": "json_object"}}, "response_format", "one or the other"),
        ({"tools": [LIGHT], "tool_choice": {"type": "function", "function": {"name": "other"}}}, "tool_choice",
         "not among"),
    ],
)  # fmt: skip
def test_hostile_tools_are_a_400_or_an_answer(tools_server, body, param, says):
    payload = json.dumps({"messages": ASK, "max_tokens": 200, **body})
    status, _, answer = request(tools_server.port, "POST", "/v1/chat/completions", payload, timeout=120)
    if param is None:  # a recursive schema: a call whose arguments validate (or an honest cut)
        assert status == 200 and answer["choices"][0]["finish_reason"] in ("tool_calls", "length"), answer
        return
    assert status == 400 and answer["error"]["param"] == param and says in answer["error"]["message"], answer


def test_a_template_without_tool_syntax_refuses_tools(decoder_bundle):
    from serving import Server

    server = Server(decoder_bundle("qwen2").root)  # plain ChatML: no <tool_call>
    try:
        payload = json.dumps({"messages": ASK, "tools": [LIGHT]})
        status, _, answer = request(server.port, "POST", "/v1/chat/completions", payload)
    finally:
        server.stop()
    assert status == 400 and answer["error"]["param"] == "tools"
    assert "writes no tool-call syntax this server reads" in answer["error"]["message"]
