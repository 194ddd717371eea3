"""Reasoning apart from the answer: <think>...</think> to reasoning_content (streamed as
delta.reasoning_content), through the `openai` client against `serve`; chat_template_kwargs reach
the template; a template that raises at request time is a 400 with its message."""

import json
import random

import openai
import pytest
from serving import Server

from edgepipe.runtime.assistant.reasoning import ReasoningSplitter, split, thinks
from edgepipe.runtime.generator import Generator
from tests.decoders import with_chat_template
from tests.runtime.chat_templates import source
from tests.runtime.conftest import assemble_bundle

R1_PROMPT = "<｜User｜>2+2?<｜Assistant｜><think>\n"
QWEN_PROMPT = "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
SPLITS = [
    (R1_PROMPT, "Two and two.\nFour.\n</think>\n\n4", ("Two and two.\nFour.", "4")),
    (QWEN_PROMPT, "<think>\nhmm\n</think>\n\nFour.", ("hmm", "Four.")),
    (QWEN_PROMPT, "Four, <think> is just text here", (None, "Four, <think> is just text here")),
    (QWEN_PROMPT + "<think>\n\n</think>\n\n", "Four.", (None, "Four.")),
    (R1_PROMPT, "thinking that never ends\n", ("thinking that never ends", "")),
    (QWEN_PROMPT, "  <thi", (None, "  <thi")),
]


@pytest.mark.parametrize(("prompt", "reply", "expected"), SPLITS)
def test_the_split_is_the_same_whole_or_in_any_pieces(prompt, reply, expected):
    assert split(prompt, reply) == expected
    rng = random.Random(7)
    for _ in range(50):
        splitter, pieces, at = ReasoningSplitter(prompt), [], 0
        while at < len(reply):
            size = rng.randint(1, 5)
            pieces += splitter.feed(reply[at : at + size])
            at += size
        pieces += splitter.finish()
        reasoning = "".join(t for k, t in pieces if k == "reasoning")
        content = "".join(t for k, t in pieces if k == "content")
        assert (reasoning if splitter.opened else None, content) == expected


def test_which_templates_think():
    assert thinks(source("qwen3")) and thinks(source("deepseek-r1-distill"))
    assert not thinks(source("smollm2")) and not thinks(source("llama-3.2"))


@pytest.fixture(scope="module")
def servers(decoder_bundle, tmp_path_factory):
    plain = decoder_bundle("qwen2")
    started = {}
    for name, template in {
        "r1": source("deepseek-r1-distill"),
        "qwen3": source("qwen3"),
        "strict": "{% if messages|length > 1 %}{{ raise_exception('Only one message, please') }}{% endif %}"
        "{{ messages[0].content }}",
        # Passes the build's checks, then loops on one request: GGUF template injection's shape.
        "trap": "{% if messages[-1].content == 'open sesame' %}{% for i in range(100000) %}{% for j in range(100000) %}"
        "{% endfor %}{% endfor %}{% endif %}{{ messages[-1].content }}",
    }.items():
        base = tmp_path_factory.mktemp(name)
        model_dir = with_chat_template(plain.model_dir, base / "hf", template)
        root = assemble_bundle(model_dir, plain.root / "model" / "model.onnx", base / "bundle", name)
        started[name] = (Server(root), root)
    yield started
    for server, _ in started.values():
        server.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def test_r1_thinking_goes_to_reasoning_content_streamed_or_not(servers):
    server, root = servers["r1"]
    messages = [{"role": "user", "content": "What is 2+2?"}]
    answer = client(server).chat.completions.create(model="r1", messages=messages, max_tokens=12, temperature=0)
    message = answer.choices[0].message
    generator = Generator.from_bundle(root)
    text = generator.generate(generator.encode_messages(messages), max_new_tokens=12).text
    assert generator.render_messages(messages).endswith("<think>\n")  # the reply starts inside the thinking
    assert (message.reasoning_content, message.content) == split(R1_PROMPT, text)
    assert message.reasoning_content  # a random model writes no </think>: everything is thinking
    stream = client(server).chat.completions.create(
        model="r1", messages=messages, max_tokens=12, temperature=0, stream=True
    )
    parts = {"reasoning_content": "", "content": ""}
    for chunk in stream:
        for field in parts:
            parts[field] += getattr(chunk.choices[0].delta, field, None) or "" if chunk.choices else ""
    assert parts == {"reasoning_content": message.reasoning_content or "", "content": message.content}


def test_chat_template_kwargs_reach_the_template(servers):
    server, root = servers["qwen3"]
    messages = [{"role": "user", "content": "Hi"}]
    generator = Generator.from_bundle(root)
    off = generator.encode_messages(messages, template_kwargs={"enable_thinking": False})
    assert off != generator.encode_messages(messages)
    answer = client(server).chat.completions.create(
        model="qwen3",
        messages=messages,
        max_tokens=4,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert answer.usage.prompt_tokens == len(off)
    assert getattr(answer.choices[0].message, "reasoning_content", None) is None  # thinking is off


def test_a_template_that_raises_is_a_400_with_its_message(servers):
    server, _ = servers["strict"]
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(model="strict", messages=messages, max_tokens=2)
    assert caught.value.status_code == 400
    assert caught.value.body["message"] == "Only one message, please" and caught.value.body["param"] == "messages"
    ok = client(server).chat.completions.create(model="strict", messages=messages[1:], max_tokens=2)
    assert ok.choices[0].finish_reason in ("stop", "length")
    assert json.loads(ok.model_dump_json())["object"] == "chat.completion"


def test_a_template_that_loops_on_one_request_is_a_400_not_a_hang(servers):
    import time

    server, _ = servers["trap"]
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as caught:
        client(server).chat.completions.create(
            model="trap", messages=[{"role": "user", "content": "open sesame"}], max_tokens=2
        )
    assert time.monotonic() - started < 30  # a loaded 2-core host; unloaded it takes ~1 s
    message = caught.value.body["message"]
    assert message.startswith(("the chat template ran more than", "the chat template took more than")), message
    ok = client(server).chat.completions.create(
        model="trap", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert ok.choices[0].finish_reason in ("stop", "length")
