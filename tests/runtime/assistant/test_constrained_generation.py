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
