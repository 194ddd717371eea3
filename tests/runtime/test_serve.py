"""`python <bundle> serve`: a real HTTP server on 127.0.0.1, started as a device would start it."""

import http.client
import json
import re
import selectors
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from serving import request

from edgepipe.runtime.embedder import Embedder

MAX_BODY, MAX_TEXTS = 4096, 4


@pytest.fixture(scope="module")
def server(tiny_bundle):
    """The bundle serving on an ephemeral loopback port; yields (port, process)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(tiny_bundle.bundle_dir),
            "serve",
            "--port",
            "0",
            "--max-body-bytes",
            str(MAX_BODY),
            "--max-texts",
            str(MAX_TEXTS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = _read_line(proc, timeout=60)
        match = re.search(r"on http://127\.0\.0\.1:(\d+)$", line)
        assert match, line
        yield int(match.group(1)), proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def _read_line(proc, timeout):
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline, data = time.monotonic() + timeout, b""
    while b"\n" not in data:
        if not sel.select(max(0.0, deadline - time.monotonic())) or proc.poll() is not None:
            raise AssertionError(f"server did not start: {data!r} {proc.stderr.read()!r}")
        data += proc.stderr.read1(4096)
    return data.decode().splitlines()[0]


def post_json(port, payload):
    return request(port, "POST", "/embed", json.dumps(payload).encode())


def test_embed_matches_the_runtime_in_process(server, tiny_bundle):
    port, _ = server
    texts = ["turn on the kitchen lights", "ok", "word " * 200]
    status, headers, body = post_json(port, {"texts": texts})
    assert status == 200 and headers["Content-Type"] == "application/json"
    expected = Embedder.from_bundle(tiny_bundle.bundle_dir).embed(texts)
    np.testing.assert_allclose(np.array(body["embeddings"]), expected, atol=1e-6)
    assert body["truncated"] == [False, False, True]
    status, _, single = post_json(port, {"text": "ok"})
    assert status == 200 and single["embeddings"] == [body["embeddings"][1]]


def test_health_and_manifest(server, tiny_bundle):
    port, _ = server
    status, _, health = request(port, "GET", "/health")
    manifest = json.loads((tiny_bundle.bundle_dir / "manifest.json").read_text())
    assert status == 200 and health["status"] == "ok"
    assert health["name"] == manifest["name"] and health["model_sha256"] == manifest["model"]["sha256"]
    status, _, served = request(port, "GET", "/manifest")
    assert status == 200 and served == manifest


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/embed", b"{not json", 400, "body is not UTF-8 JSON"),
        ("POST", "/embed", b"\xff\xfe", 400, "body is not UTF-8 JSON"),
        ("POST", "/embed", b'["a"]', 400, 'body must be a JSON object with "texts"'),
        ("POST", "/embed", b'{"texts": "a"}', 400, '"texts" must be a list of strings'),
        ("POST", "/embed", b'{"texts": ["a", 3]}', 400, "text 1 is int, not a string"),
        ("POST", "/embed", b'{"texts": []}', 400, '"texts" is empty'),
        ("POST", "/embed", b'{"text": "a\\u0000b"}', 400, "contains a NUL character"),
        ("POST", "/embed", b'{"texts": ["a","b","c","d","e"]}', 413, "5 texts in one request"),
        ("POST", "/embed", b"x" * (MAX_BODY * 3), 413, f"at most {MAX_BODY}"),
        ("GET", "/embed", None, 405, "/embed answers POST, not GET"),
        ("DELETE", "/health", None, 405, "/health answers GET, not DELETE"),
        ("GET", "/nope", None, 404, "no such path: /nope"),
    ],
)
def test_bad_requests_get_a_json_error(server, method, path, body, status, message):
    port, proc = server
    got, headers, payload = request(port, method, path, body)
    assert got == status and message in payload["error"], payload
    assert list(payload) == ["error"]
    if status == 405:
        assert headers["Allow"] in ("GET", "POST")
    assert proc.poll() is None  # still serving


def test_missing_content_length_is_refused(server):
    port, _ = server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("POST", "/embed")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    conn.close()


def test_stops_cleanly_on_sigterm(tiny_bundle):
    proc = subprocess.Popen(
        [sys.executable, str(tiny_bundle.bundle_dir), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _read_line(proc, timeout=60)
    proc.terminate()
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0 and b"Traceback" not in stderr


def test_sigterm_answers_the_request_in_flight_first(tiny_bundle):
    """A restart (update's `systemctl restart`) loses no request: one whose body is still arriving
    when SIGTERM comes is read, answered 200, and only then does the server exit 0."""
    proc = subprocess.Popen(
        [sys.executable, str(tiny_bundle.bundle_dir), "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    port = int(re.search(r":(\d+)$", _read_line(proc, timeout=60)).group(1))
    body = json.dumps({"texts": ["turn on the kitchen lights"]}).encode()
    head = f"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + body[:5])
        time.sleep(1.5)  # the server has the headers and waits for the rest of the body
        proc.terminate()
        time.sleep(1.5)
        assert proc.poll() is None, "the server exited with a request in flight"
        sock.sendall(body[5:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, payload = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200")
    expected = Embedder.from_bundle(tiny_bundle.bundle_dir).embed(["turn on the kitchen lights"])
    np.testing.assert_allclose(np.array(json.loads(payload)["embeddings"]), expected, atol=1e-6)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"Traceback" not in stderr and stderr.rstrip().endswith(b"stopped")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "error: --host 0.0.0.0 is not a loopback address"),
        (["--host", "192.168.1.10"], "error: --host 192.168.1.10 is not a loopback address"),
        (
            ["--max-texts", "0"],
            "error: --max-body-bytes, --max-texts and --max-connections must be at least 1",
        ),
    ],
)
def test_refuses_to_start_with_one_line(tiny_bundle, args, message):
    proc = subprocess.run(
        [sys.executable, str(tiny_bundle.bundle_dir), "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1 and lines[0].startswith(message), lines


def test_port_in_use_is_one_line(server, tiny_bundle):
    port, _ = server
    proc = subprocess.run(
        [sys.executable, str(tiny_bundle.bundle_dir), "serve", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3
    assert proc.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_generate_on_an_embedding_bundle_is_404(server):
    status, _, body = request(server[0], "POST", "/generate", b'{"prompt": "hi"}')
    assert status == 404
    assert body["error"] == "this is an embedding bundle: POST /embed, not /generate"
