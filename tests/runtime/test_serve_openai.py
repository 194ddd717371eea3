"""`serve`'s OpenAI-compatible endpoints, driven by the real `openai` package over loopback."""

import json
import subprocess
import sys

import openai
import pytest
from serving import Server, request

from edgepipe.runtime.embedder import Embedder
from edgepipe.runtime.generator import Generator

KEY = "test-key-123"
TEXTS = ["turn on the kitchen lights", "ok", "word " * 200]


@pytest.fixture(scope="module")
def embed_server(tiny_bundle):
    server = Server(tiny_bundle.bundle_dir, "--max-texts", "4")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chat_server(decoder_bundle):
    server = Server(decoder_bundle("qwen2").root, env={"EDGEPIPE_API_KEY": KEY})
    yield server
    server.stop()


def client(server, key=KEY):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def run_bundle(root, *args):
    proc = subprocess.run([sys.executable, str(root), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_models_lists_the_bundle(embed_server, tiny_bundle):
    models = client(embed_server).models.list().data
    manifest = tiny_bundle.manifest
    assert [m.id for m in models] == [manifest["name"]]
    assert models[0].model_extra["target"] == manifest["target"]["name"]
    assert models[0].model_extra["profile"] == manifest["profile"]["name"]
    assert client(embed_server).models.retrieve(manifest["name"]).id == manifest["name"]


def test_embeddings_equal_the_bundles_embed_command(embed_server, tiny_bundle):
    root = tiny_bundle.bundle_dir
    cli = [json.loads(line)["embedding"] for line in run_bundle(root, "embed", *TEXTS).splitlines()]
    api = client(embed_server)
    floats = api.embeddings.create(model="any", input=TEXTS, encoding_format="float")
    assert [d.embedding for d in floats.data] == cli
    assert [d.index for d in floats.data] == [0, 1, 2]
    # The client's default is base64 float32: the same vectors before the CLI's 7-digit rounding.
    packed = api.embeddings.create(model="any", input=TEXTS)
    for got, want in zip(packed.data, cli, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-7)
    single = api.embeddings.create(model="any", input=TEXTS[1], encoding_format="float")
    assert single.data[0].embedding == cli[1]
    counts = [Embedder.from_bundle(root).token_count(t)[0] for t in TEXTS]
    assert single.usage.prompt_tokens == counts[1] and floats.usage.prompt_tokens == sum(counts)


def test_chat_completion_equals_generate_chat_token_for_token(chat_server, decoder_bundle):
    root = decoder_bundle("qwen2").root
    expected = json.loads(run_bundle(root, "generate", "hello", "--chat", "--json", "--max-new-tokens", "12"))
    api = client(chat_server)
    messages = [{"role": "user", "content": "hello"}]
    reply = api.chat.completions.create(model="tiny-qwen2", messages=messages, temperature=0, max_tokens=12)
    choice = reply.choices[0]
    assert choice.message.content == expected["text"] and choice.message.role == "assistant"
    assert reply.usage.completion_tokens == len(expected["token_ids"])
    assert reply.usage.prompt_tokens == expected["timings"]["prompt_tokens"]
    assert choice.finish_reason == {"eos": "stop", "length": "length"}[expected["stop_reason"]]
    stream = api.chat.completions.create(
        model="tiny-qwen2",
        messages=messages,
        temperature=0,
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == expected["text"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == len(expected["token_ids"])


def test_multi_turn_chat_is_the_models_own_template(chat_server, decoder_bundle):
    from transformers import AutoTokenizer

    bundle = decoder_bundle("qwen2")
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "and now?"}]},
    ]
    reply = client(chat_server).chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=8)
    tokenizer = AutoTokenizer.from_pretrained(bundle.model_dir)
    flat = [{**m, "content": m["content"]} for m in messages[:3]] + [{"role": "user", "content": "and now?"}]
    ids = tokenizer.apply_chat_template(flat, tokenize=True, add_generation_prompt=True)
    expected = Generator.from_bundle(bundle.root).generate(list(ids), max_new_tokens=8)
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.choices[0].message.content == expected.text


def test_completion_equals_generate(chat_server, decoder_bundle):
    root = decoder_bundle("qwen2").root
    expected = json.loads(run_bundle(root, "generate", "Once upon", "--json"))
    api = client(chat_server)
    reply = api.completions.create(model="m", prompt="Once upon", temperature=0, max_tokens=64)
    assert reply.choices[0].text == expected["text"]
    assert reply.usage.completion_tokens == len(expected["token_ids"])
    stream = api.completions.create(model="m", prompt="Once upon", temperature=0, max_tokens=64, stream=True)
    assert "".join(c.choices[0].text for c in stream) == expected["text"]
    short = api.completions.create(model="m", prompt="Once upon", temperature=0)
    assert short.usage.completion_tokens <= 16  # OpenAI's default max_tokens


def test_a_wrong_or_missing_key_is_401(chat_server):
    with pytest.raises(openai.AuthenticationError) as caught:
        client(chat_server, key="wrong").models.list()
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"
    for path in ("/health", "/v1/models"):
        status, headers, body = request(chat_server.port, "GET", path)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    status, _, _ = request(chat_server.port, "GET", "/health", headers={"Authorization": f"Bearer {KEY}"})
    assert status == 200


@pytest.mark.parametrize(
    ("payload", "param", "message"),
    [
        ({"messages": []}, "messages", '"messages" must be a non-empty list'),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0]", "must be an object"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 99}, "n", '"n" must be an integer from 1 to 8'),
        (
            {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            "temperature",
            '"temperature" must be a number',
        ),
        ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop", '"stop" must be'),
        (
            {"messages": [{"role": "user", "content": "x", "audio": {}}]},
            "messages[0].audio",
            "messages[0]: unknown field 'audio'",
        ),
        ({"messages": [{"role": "user", "content": "word " * 400}]}, "messages", "reads at most 256 tokens"),
    ],
)
def test_bad_chat_requests_are_400_in_openais_shape(chat_server, payload, param, message):
    status, _, body = request(
        chat_server.port,
        "POST",
        "/v1/chat/completions",
        json.dumps(payload).encode(),
        {"Authorization": f"Bearer {KEY}"},
    )
    error = body["error"]
    assert status == 400 and set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and message in error["message"], error
    assert error["type"] == "invalid_request_error"


def test_the_other_tasks_endpoints_are_404_in_openais_shape(embed_server):
    api = client(embed_server)
    with pytest.raises(openai.NotFoundError) as caught:
        api.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "this is an embedding bundle" in caught.value.body["message"]
    status, _, body = request(embed_server.port, "GET", "/v1/nope")
    assert status == 404 and body["error"]["code"] == "not_found"


def test_chat_is_off_with_the_builds_reason(decoder_bundle):
    server = Server(decoder_bundle("llama").root)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            client(server).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.body["message"] == ("chat is off for this bundle: this model has no chat template")
        status, _, health = request(server.port, "GET", "/health")
        assert health["chat"] == "this model has no chat template"
    finally:
        server.stop()
