"""`python <bundle> serve` on a text-generation bundle: POST /generate over real HTTP."""

import json
import re
import subprocess
import sys

import pytest
from serving import request
from test_serve import _read_line

from edgepipe.runtime.generator import Generator


@pytest.fixture(scope="module")
def generate_server(decoder_bundle):
    """The tiny Qwen2 bundle serving on an ephemeral loopback port; yields (port, root)."""
    root = decoder_bundle("qwen2").root
    proc = subprocess.Popen(
        [sys.executable, str(root), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        match = re.search(r"on http://127\.0\.0\.1:(\d+)$", _read_line(proc, timeout=60))
        assert match
        yield int(match.group(1)), root
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post(port, path, payload):
    return request(port, "POST", path, json.dumps(payload).encode())


def test_generate_answers_like_generate_json(generate_server):
    port, root = generate_server
    payload = {
        "prompt": "hello",
        "max_new_tokens": 12,
        "temperature": 0.8,
        "top_k": 50,
        "top_p": 0.9,
        "seed": 3,
        "stop": ["zzz"],
        "chat": True,
    }
    status, headers, body = post(port, "/generate", payload)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(body) == {"text", "token_ids", "stop_reason", "timings"}
    options = {k: v for k, v in payload.items() if k != "prompt"}
    expected = Generator.from_bundle(root).generate("hello", **options)
    assert body["token_ids"] == expected.token_ids and body["text"] == expected.text
    status, _, greedy = post(port, "/generate", {"prompt": "hello", "max_new_tokens": 5})
    assert status == 200
    assert greedy["token_ids"] == expected_greedy(root)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"text": "hi"}, 'body must be a JSON object with "prompt"'),
        (["hi"], 'body must be a JSON object with "prompt"'),
        ({"prompt": "hi", "temp": 1}, "unknown field 'temp'"),
        ({"prompt": "hi", "temperature": "hot"}, '"temperature" must be int or float, not str'),
        ({"prompt": "hi", "chat": 1}, '"chat" must be bool, not int'),
        ({"prompt": "hi", "max_new_tokens": True}, '"max_new_tokens" must be int, not bool'),
        ({"prompt": "hi", "temperature": -1}, "temperature must be 0 (greedy) or more"),
        ({"prompt": "hi", "top_p": 0}, "top_p must be in (0, 1]"),
        ({"prompt": "hi", "stop": "x"}, '"stop" must be list, not str'),
        ({"prompt": "hi", "stop": [1]}, "stop strings must be a list of non-empty strings"),
        ({"prompt": ""}, "the prompt is empty"),
        ({"prompt": "word " * 400}, "reads at most 256 tokens"),
        ({"prompt": "a\x00b"}, "NUL character"),
    ],
)
def test_bad_generate_requests_are_400_with_one_line(generate_server, payload, message):
    status, _, body = post(generate_server[0], "/generate", payload)
    assert status == 400 and message in body["error"] and "\n" not in body["error"]


def test_embed_on_a_generation_bundle_is_404(generate_server):
    status, _, body = post(generate_server[0], "/embed", {"text": "hi"})
    assert status == 404
    assert body["error"] == "this is a text-generation bundle: POST /generate, not /embed"


def test_health_says_the_task(generate_server):
    status, _, health = request(generate_server[0], "GET", "/health")
    assert status == 200 and health["task"] == "text-generation" and health["max_length"] == 256
    assert health["max_context"] == 256


def expected_greedy(root):
    return Generator.from_bundle(root).generate("hello", max_new_tokens=5).token_ids
