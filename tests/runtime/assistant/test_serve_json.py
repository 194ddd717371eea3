"""`response_format` through `serve` and the real `openai` client: the answers parse and validate on random weights."""

from __future__ import annotations

import json

import jsonschema
import openai
import pydantic
import pytest
from serving import Server, request


class Command(pydantic.BaseModel):
    device: str
    room: str
    on: bool
    level: int


SCHEMA = {
    "type": "object",
    "properties": {"device": {"enum": ["lights", "fan"]}, "level": {"type": "integer"}, "rooms": {
        "type": "array", "items": {"type": "string"}}},
    "required": ["device", "level", "rooms"],
}  # fmt: skip
MESSAGES = [{"role": "user", "content": "Turn on the kitchen lights"}]


@pytest.fixture(scope="module")
def server(decoder_bundle):
    server = Server(decoder_bundle("qwen2").root)
    yield server
    server.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)


def test_parse_with_a_pydantic_model(server):
    for seed in range(3):
        reply = client(server).beta.chat.completions.parse(
            model="tiny", messages=MESSAGES, response_format=Command, temperature=1.0, seed=seed, max_tokens=200
        )
        choice = reply.choices[0]
        assert choice.finish_reason == "stop" and isinstance(choice.message.parsed, Command)
        assert Command.model_validate_json(choice.message.content) == choice.message.parsed


def test_json_schema_and_json_object_streamed_and_not(server):
    api = client(server)
    schema = {"type": "json_schema", "json_schema": {"name": "command", "schema": SCHEMA}}
    for response_format, check in ((schema, SCHEMA), ({"type": "json_object"}, {"type": "object"})):
        whole = api.chat.completions.create(
            model="tiny", messages=MESSAGES, response_format=response_format, temperature=0, max_tokens=200
        )
        text = whole.choices[0].message.content
        jsonschema.validate(json.loads(text), check)
        pieces = api.chat.completions.create(
            model="tiny", messages=MESSAGES, response_format=response_format, temperature=0, max_tokens=200,
            stream=True,
        )  # fmt: skip
        chunks = list(pieces)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("response_format", "param", "message"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"uniqueItems": True, "type": "array"}}},
         "response_format.json_schema.schema", "uses uniqueItems, which this server cannot enforce"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/none"}}},
         "response_format.json_schema.schema", "does not exist"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": "not a schema"}},
         "response_format.json_schema.schema", "must be a JSON Schema object"),
        ({"type": "yaml"}, "response_format", '"response_format" must be'),
        ({"type": "json_schema"}, "response_format.json_schema", "must be {"),
    ],
)  # fmt: skip
def test_what_cannot_be_enforced_is_a_400_naming_it(server, response_format, param, message):
    payload = json.dumps({"messages": MESSAGES, "response_format": response_format})
    status, _, body = request(server.port, "POST", "/v1/chat/completions", payload)
    assert status == 400 and body["error"]["param"] == param and message in body["error"]["message"], body
