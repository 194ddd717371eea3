"""Grammar-constrained decoding on a real tokenizer: masks, closes near the budget, and 400s for what it cannot do."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pytest

from edgepipe.runtime.assistant.grammar import (
    MAX_SCHEMA_BYTES,
    Constraint,
    GrammarError,
    Vocabulary,
    closed,
    schema_grammar,
)
from tests.decoders import byte_level_bpe

COMMAND = {
    "type": "object",
    "properties": {
        "device": {"enum": ["lights", "fan", "heater"]},
        "on": {"type": "boolean"},
        "level": {"type": "integer", "minimum": 0, "maximum": 100},
        "room": {"type": "string"},
    },
    "required": ["device", "on", "level", "room"],
}
NODE = {
    "$defs": {
        "node": {
            "type": "object",
            "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
            "required": ["v", "kids"],
        }
    },
    "$ref": "#/$defs/node",
}


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory: pytest.TempPathFactory):
    tokenizer = byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"], 384)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return tokenizer, Vocabulary.of(path, tokenizer.token_to_id("<|im_end|>"))


def run(vocabulary, schema, budget: int, seed: int, scale: float = 3.0) -> tuple[str, int, Constraint]:
    """Random logits, masked: what a random-weight model writes under the grammar."""
    tokenizer, vocab = vocabulary
    constraint = Constraint(vocab, schema_grammar(schema))
    rng, ids = np.random.default_rng(seed), []
    while len(ids) < budget:
        logits = (rng.normal(size=vocab.size + 7) * scale).astype(np.float32)  # padded like real exports
        token = int(constraint.mask(logits, budget - len(ids)).argmax())
        constraint.advance(token)
        ids.append(token)
        if token == vocab.eos or constraint.stopped:
            break
    return tokenizer.decode([i for i in ids if i != vocab.eos]), len(ids), constraint


@pytest.mark.parametrize("schema", [COMMAND, NODE, {"type": "object"}], ids=["command", "recursive", "any-object"])
def test_random_logits_always_give_valid_json(vocabulary, schema):
    for seed in range(12):
        text, used, constraint = run(vocabulary, schema, 160, seed)
        assert constraint.accepting, (seed, used, text)
        jsonschema.validate(json.loads(text), schema)


def test_the_close_is_steered_to_before_max_tokens(vocabulary):
    # Without steering a random model's strings run on: every one of these would be cut mid-string.
    valid = 0
    for seed in range(10):
        text, used, constraint = run(vocabulary, COMMAND, 60, seed, scale=10.0)
        if constraint.accepting:
            jsonschema.validate(json.loads(text), COMMAND)
            valid += 1
    assert valid >= 8


def test_forbidden_tokens_are_minus_infinity_and_padding_too(vocabulary):
    _, vocab = vocabulary
    constraint = Constraint(vocab, schema_grammar({"type": "boolean"}))
    masked = constraint.mask(np.zeros(vocab.size + 5, dtype=np.float32))
    allowed = np.flatnonzero(np.isfinite(masked))
    assert 0 < allowed.size < 10 and (allowed < vocab.size).all()
    assert masked.dtype == np.float32


def test_closed_adds_no_others_where_properties_are_given():
    schema = {"type": "object", "properties": {"a": {"type": "object", "properties": {}}}, "enum": [{"x": 1}]}
    out = closed(schema)
    assert out["additionalProperties"] is False and out["properties"]["a"]["additionalProperties"] is False
    assert out["enum"] == [{"x": 1}] and "additionalProperties" not in schema  # the caller's stays as it was
    assert closed({"type": "object", "additionalProperties": True}) == {"type": "object", "additionalProperties": True}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "array", "uniqueItems": True}, "uses uniqueItems, which this server cannot enforce"),
        ({"not": {"type": "string"}}, "uses not, which this server cannot enforce"),
        ({"type": "strin"}, "Invalid type: strin"),
        ({"$ref": "#/$defs/missing"}, "does not exist"),
        ([{"type": "string"}], "must be a JSON Schema object, not list"),
        ({"type": "string", "format": "zzz"}, "Unknown format: zzz"),
    ],
)
def test_what_cannot_be_enforced_is_refused_by_name(schema, message):
    with pytest.raises(GrammarError, match=message) as caught:
        schema_grammar(schema, "response_format.json_schema.schema")
    assert caught.value.param == "response_format.json_schema.schema"
    assert str(caught.value).startswith("response_format.json_schema.schema ")


def test_huge_and_deep_schemas_are_refused_quickly():
    wide = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}}
    with pytest.raises(GrammarError, match=f"at most {MAX_SCHEMA_BYTES}"):
        schema_grammar(wide)
    deep: dict = {"type": "integer"}
    for _ in range(5000):
        deep = {"type": "array", "items": deep}
    with pytest.raises(GrammarError, match="nests deeper than"):
        schema_grammar(deep)
