"""Nothing silently ignored: `n` choices and `logprobs` honoured, every other field a bundle cannot
honour, and every field it does not know, a 400 naming it (through the `openai` client)."""

import math

import openai
import pytest
from serving import Server

from edgepipe.runtime.generator import Generator

MESSAGES = [{"role": "user", "content": "Turn on the kitchen lights"}]


@pytest.fixture(scope="module")
def chat(decoder_bundle):
    bundle = decoder_bundle("qwen2")
    server = Server(bundle.root)
    yield server, bundle.root
    server.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def test_n_choices_are_n_generations_seeded_one_after_another(chat):
    server, root = chat
    answer = client(server).chat.completions.create(
        model="m", messages=MESSAGES, n=3, temperature=1.0, seed=5, max_tokens=6
    )
    generator = Generator.from_bundle(root)
    ids = generator.encode_messages(MESSAGES)
    expected = [generator.generate(ids, temperature=1.0, seed=5 + i, max_new_tokens=6) for i in range(3)]
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.message.content for c in answer.choices] == [e.text for e in expected]
    assert answer.usage.completion_tokens == sum(len(e.token_ids) for e in expected)
    assert answer.usage.prompt_tokens == len(ids)


def test_logprobs_are_the_models_own(chat):
    server, root = chat
    answer = client(server).chat.completions.create(
        model="m", messages=MESSAGES, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3
    )
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    generator = Generator.from_bundle(root)
    ids = generator.encode_messages(MESSAGES)
    result = generator.generate(ids, max_new_tokens=5)
    logits = generator.logits(ids + result.token_ids[:-1])[len(ids) - 1 :]
    for entry, token, row in zip(content, result.token_ids, logits, strict=True):
        row = row.astype("float64")
        expected = row[token] - row.max() - math.log(sum(math.exp(x - row.max()) for x in row))
        assert entry.logprob == pytest.approx(expected, abs=1e-3)
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
    text = client(server).completions.create(model="m", prompt="Hello", max_tokens=4, logprobs=2, temperature=0)
    logprobs = text.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == 4
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        ({"frobnicate": True}, "frobnicate", "unknown field 'frobnicate' for /v1/chat/completions"),
        ({"presence_penalty": 0.5}, "presence_penalty", '"presence_penalty" other than 0 is not supported'),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}},
            "response_format.json_schema.schema",
            "uses not, which this server cannot enforce",
        ),
        ({"logit_bias": {"12": 5}}, "logit_bias", '"logit_bias" other than {}'),
        ({"n": 2, "stream": True}, "n", '"n" > 1 with "stream" is not supported'),
        ({"logprobs": True, "stream": True}, "logprobs", '"logprobs" with "stream" is not supported'),
        ({"top_logprobs": 2}, "top_logprobs", '"top_logprobs" needs "logprobs": true'),
        ({"chat_template_kwargs": {"messages": []}}, "chat_template_kwargs", "may not set 'messages'"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(chat, extra, param, message):
    server, _ = chat
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(model="m", messages=MESSAGES, max_tokens=2, extra_body=extra)
    assert caught.value.body["param"] == param and message in caught.value.body["message"], caught.value.body


def test_fields_that_ask_for_nothing_are_accepted(chat):
    server, _ = chat
    answer = client(server).chat.completions.create(
        model="m",
        messages=MESSAGES,
        max_tokens=2,
        presence_penalty=0,
        frequency_penalty=0,
        user="someone",
        n=1,
        extra_body={"response_format": {"type": "text"}},
    )
    assert answer.choices[0].finish_reason in ("stop", "length")
