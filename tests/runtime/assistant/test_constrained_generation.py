"""The generator under a grammar: a random-weight decoder's answers parse and validate."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edgepipe.runtime.assistant.grammar import Constraint, Vocabulary, schema_grammar
from edgepipe.runtime.generator import Generator

SCHEMA = {
    "type": "object",
    "properties": {"device": {"enum": ["lights", "fan"]}, "level": {"type": "integer"}, "room": {"type": "string"}},
    "required": ["device", "level", "room"],
}


@pytest.fixture(scope="module")
def generator(decoder_bundle):
    return Generator.from_bundle(decoder_bundle("qwen2").root)


def test_random_weights_write_valid_json_greedy_and_sampled(generator):
    vocabulary = Vocabulary.of(generator.tokenizer_path, generator.config.eos_token_ids[0])
    grammar = schema_grammar(SCHEMA)
    for seed, temperature in [(0, 0.0), (1, 1.0), (2, 1.5), (3, 0.7)]:
        result = generator.generate(
            "Turn on the lights", max_new_tokens=120, temperature=temperature, seed=seed,
            constraint=Constraint(vocabulary, grammar),
        )  # fmt: skip
        assert result.stop_reason in ("grammar", "eos"), result
        jsonschema.validate(json.loads(result.text), SCHEMA)


def test_without_a_constraint_nothing_changes(generator):
    a = generator.generate("Turn on the lights", max_new_tokens=12)
    b = generator.generate("Turn on the lights", max_new_tokens=12, constraint=None, on_token=lambda t: None)
    assert a.token_ids == b.token_ids


TOOLS = [
    {"type": "function", "function": {"name": "set_light", "parameters": {"type": "object", "properties": {
        "room": {"enum": ["kitchen", "hall"]}, "level": {"type": "integer", "minimum": 0, "maximum": 100}},
        "required": ["room", "level"]}}},
    {"type": "function", "function": {"name": "note", "parameters": {"type": "object", "properties": {
        "text": {"type": "string"}}, "required": ["text"]}}},
]  # fmt: skip


@pytest.mark.parametrize("family", ["hermes", "llama3", "mistral", "deepseek", "gpt-oss"])
def test_a_forced_call_parses_and_validates_in_every_familys_syntax(generator, family):
    from edgepipe.runtime.assistant.structured import ChatAnswer, Plan, lark_token
    from edgepipe.runtime.assistant.tools import SYNTAXES, tool_request

    vocabulary = Vocabulary.of(generator.tokenizer_path, generator.config.eos_token_ids[0])
    tools = tool_request({"tools": TOOLS, "tool_choice": "required", "parallel_tool_calls": family == "hermes"})
    syntax = SYNTAXES[family]
    lark = syntax.lark(tools.offered(), tools.parallel, lambda marker: lark_token(vocabulary, marker))
    from edgepipe.runtime.assistant.grammar import lark_grammar

    plan = Plan(lark_grammar(lark, "tools"), tools, syntax)
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
    for seed in range(3):
        result = generator.generate(
            "Kitchen lights to half", max_new_tokens=200, temperature=1.0, seed=seed,
            constraint=plan.constraint(vocabulary),
        )  # fmt: skip
        message, reason = ChatAnswer(plan, generator.tokenizer, generator.eos).message(result)
        assert reason == "tool_calls", (family, result.text)
        for call in message["tool_calls"]:
            jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
