"""`serve` under hostile input on its loopback port: each case a defined status and one log line,
no 500, no thread left behind, and /health answering within a second throughout."""

import http.client
import io
import json
import select
import socket
import threading
import time

import pytest
from serving import Server, health_seconds, request

TIMEOUT = 1.0  # the servers' --timeout: idle, stalled and slow-reading clients are dropped after it
MAX_CONNECTIONS = 16


@pytest.fixture(scope="module")
def embed_server(tiny_bundle):
    server = Server(
        tiny_bundle.bundle_dir,
        "--timeout",
        str(TIMEOUT),
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--max-texts",
        "8",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def chat_server(decoder_bundle):
    server = Server(decoder_bundle("qwen2").root, "--timeout", str(TIMEOUT))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def baseline(embed_server, chat_server):
    """Each server's thread count when idle: its main thread and onnxruntime's pool."""
    for server in (embed_server, chat_server):
        health_seconds(server.port)
    time.sleep(0.3)
    return {id(s): s.threads() for s in (embed_server, chat_server)}


@pytest.fixture(autouse=True)
def no_harm_done(embed_server, chat_server, baseline):
    """After each case: threads back to idle, /health under 1 s, no 500 and no traceback."""
    yield
    for server in (embed_server, chat_server):
        deadline = time.monotonic() + TIMEOUT + 5
        while server.threads() > baseline[id(server)] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.threads() == baseline[id(server)], "a thread was left behind"
        assert health_seconds(server.port) < 1.0
        assert not [line for line in server.lines if '" 500 ' in line or "Traceback" in line]
        assert server.proc.poll() is None


class _Unclosed(io.BytesIO):
    def close(self) -> None:  # http.client closes its file after each response
        pass


def responses(data: bytes) -> list[tuple[int, dict, object]]:
    """(status, headers, JSON body) of every HTTP response in ``data``, in order."""
    stream, found = _Unclosed(data), []

    class Source:
        def makefile(self, mode):
            return stream

    while stream.tell() < len(data):
        response = http.client.HTTPResponse(Source())  # type: ignore[arg-type]
        response.begin()
        found.append((response.status, dict(response.getheaders()), json.loads(response.read())))
    return found


def exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 10) -> bytes:
    """Send raw bytes; everything the server answers until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def post(path: str, body: bytes, extra: str = "", close: bool = True) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if close:
        head += "Connection: close\r\n"
    return (head + extra + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def message_of(body) -> str:
    error = body["error"]
    return error["message"] if isinstance(error, dict) else error


BOMBS = {
    "100,000 levels of nesting": b"[" * 100_000 + b"]" * 100_000,
    "65 levels of objects": b'{"a":' * 65 + b"1" + b"}" * 65,
    "a 5,000-digit integer": b'{"x": ' + b"9" * 5000 + b"}",
    "an overflowing exponent": b'{"x": 1e999999999}',
    "a negative overflowing exponent": b'{"x": -1.5e400}',
    "NaN": b'{"x": NaN}',
    "Infinity": b'{"x": [Infinity]}',
    "duplicate keys": b'{"text": "a", "text": "b", "input": "a", "prompt": "a"}',
    "a lone high surrogate": b'{"text": "\\ud800", "input": "\\ud800", "prompt": "\\ud800"}',
    "a lone low surrogate in a key": b'{"\\udc00": 1}',
    "surrogate bytes (CESU-8)": b'{"text": "\xed\xa0\x80"}',
}
REASONS = {
    "100,000 levels of nesting": "nested deeper than 64 levels",
    "65 levels of objects": "nested deeper than 64 levels",
    "a 5,000-digit integer": "more than 40 digits",
    "an overflowing exponent": "out of range",
    "a negative overflowing exponent": "out of range",
    "NaN": "NaN is not JSON",
    "Infinity": "Infinity is not JSON",
    "duplicate keys": "duplicate key 'text'",
    "a lone high surrogate": "lone UTF-16 surrogate",
    "a lone low surrogate in a key": "lone UTF-16 surrogate",
    "surrogate bytes (CESU-8)": "not UTF-8",
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_json_bombs_are_400_with_one_log_line_on_every_endpoint(embed_server, chat_server, case):
    for server, path in (
        (embed_server, "/embed"),
        (embed_server, "/v1/embeddings"),
        (chat_server, "/generate"),
        (chat_server, "/v1/chat/completions"),
        (chat_server, "/v1/completions"),
    ):
        since = len(server.lines)
        [(status, _, body)] = responses(exchange(server.port, post(path, BOMBS[case])))
        assert status == 400 and REASONS[case] in message_of(body), (path, body)
        logged = server.requests_logged(since)
        assert len(logged) == 1 and f'{path} HTTP/1.1" 400 ' in logged[0], logged
        assert isinstance(body["error"], dict) == path.startswith("/v1/")


def test_a_content_length_shorter_than_the_body(embed_server):
    since = len(embed_server.lines)
    body = b'{"text": "hello"}, "extra": 1}\r\n\r\n'
    data = b"POST /embed HTTP/1.1\r\nContent-Length: 17\r\n\r\n" + body
    answers = responses(exchange(embed_server.port, data))
    # The declared 17 bytes are the request; the rest is read as the next one, and refused.
    assert [status for status, _, _ in answers] == [200, 400]
    assert answers[1][1]["Connection"] == "close"
    assert len(embed_server.requests_logged(since, 2)) == 2


def test_a_content_length_longer_than_the_body(embed_server):
    since = len(embed_server.lines)
    data = b'POST /embed HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"text": "a"}'
    [(status, headers, body)] = responses(exchange(embed_server.port, data))
    assert status == 408 and "did not arrive within 1 s" in body["error"]
    assert headers["Connection"] == "close"
    [(status, _, body)] = responses(exchange(embed_server.port, data, half_close=True))
    assert status == 400 and "ended after 13 of the 100 bytes" in body["error"]
    assert [line.split('" ')[1][:3] for line in embed_server.requests_logged(since, 2)] == [
        "408",
        "400",
    ]


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ("Transfer-Encoding: chunked\r\n", 411, "Transfer-Encoding bodies (chunked)"),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 411, "Transfer-Encoding"),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", 400, "one decimal number"),
        ("Content-Length: -5\r\n", 400, "one decimal number"),
        ("Content-Length: \u00b2\r\n", 400, "one decimal number"),
        ("Content-Length: 99999999999999999999\r\n", 400, "one decimal number"),
        ("", 411, "a Content-Length header is required"),
    ],
)
def test_bodies_without_one_honest_length(embed_server, headers, status, reason):
    since = len(embed_server.lines)
    data = f"POST /v1/embeddings HTTP/1.1\r\n{headers}\r\n".encode("latin-1") + b'5\r\n{"in"\r\n0\r\n\r\n'
    [(got, answer_headers, body)] = responses(exchange(embed_server.port, data))
    assert got == status and reason in body["error"]["message"]
    assert answer_headers["Connection"] == "close"
    assert len(embed_server.requests_logged(since)) == 1


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"BREW /health HTTP/1.1\r\n\r\n", 405),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /manifest HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (b"GET /manifest HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),  # HTTP/2's preface: the version is refused
    ],
)
def test_malformed_requests_are_refused_in_json(embed_server, data, status):
    since = len(embed_server.lines)
    [(got, _, body)] = responses(exchange(embed_server.port, data))
    assert got == status and body["error"]
    assert len(embed_server.requests_logged(since)) == 1


def test_pipelined_and_keep_alive_requests(embed_server):
    since = len(embed_server.lines)
    one = post("/embed", b'{"text": "a"}', close=False)
    data = b"GET /v1/models HTTP/1.1\r\n\r\n" + one + one + b"GET /health HTTP/1.1\r\n"
    data += b"Connection: close\r\n\r\n"
    answers = responses(exchange(embed_server.port, data))
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert answers[1][2] == answers[2][2] and answers[3][2]["status"] == "ok"
    conn = http.client.HTTPConnection("127.0.0.1", embed_server.port, timeout=10)
    for _ in range(5):  # one connection, one server thread, five answers
        conn.request("POST", "/embed", body=b'{"text": "a"}')
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read()) == answers[1][2]
    conn.close()
    assert len(embed_server.requests_logged(since, 8)) == 3 + 5


def test_many_idle_connections(embed_server):
    since = len(embed_server.lines)
    idle = [socket.create_connection(("127.0.0.1", embed_server.port)) for _ in range(12)]
    try:
        for _ in range(3):
            assert health_seconds(embed_server.port) < 1.0
        deadline = time.monotonic() + 5  # until the checks' own connections are gone
        while request(embed_server.port, "GET", "/health")[2]["connections"] != 13:
            assert time.monotonic() < deadline
        extra = [socket.create_connection(("127.0.0.1", embed_server.port)) for _ in range(8)]
        idle += extra
        refused, waiting, deadline = [], list(extra), time.monotonic() + TIMEOUT / 2
        while waiting and time.monotonic() < deadline:  # before the idle ones time out
            ready, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))
            for sock in ready:
                refused.append(sock.recv(65536))
                waiting.remove(sock)
        # 12 + 4 = MAX_CONNECTIONS are served (and idle); those beyond are answered 503 at once.
        # At least 4: on a loaded machine the /health check's own connection may still count for
        # a moment (the server closes it after answering), and then a 5th is refused too.
        assert 4 <= len(refused) <= 5
        assert all(r.startswith(b"HTTP/1.1 503 ") for r in refused)
        for sock in idle:  # the server closes idle connections after --timeout
            sock.settimeout(TIMEOUT + 5)
            assert sock.recv(65536) in (b"",) or sock in extra
        assert health_seconds(embed_server.port) < 1.0
    finally:
        for sock in idle:
            sock.close()
    logged = embed_server.requests_logged(since, 20)
    assert sum("timed out" in line for line in logged) == 16
    assert sum("503 refused" in line for line in logged) == 4 and len(logged) == 20


def test_a_client_that_reads_slowly_is_dropped(embed_server):
    since = len(embed_server.lines)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", embed_server.port))
    # More answers than the kernel's buffers hold (tcp_wmem's 4 MiB at most), read at 2.5 kB/s:
    # slower than one answer a --timeout.
    sock.sendall(b"GET /manifest HTTP/1.1\r\n\r\n" * 2000)
    sock.settimeout(0.2)
    received, closed, deadline = 0, False, time.monotonic() + 20
    while time.monotonic() < deadline and not closed:
        try:
            chunk = sock.recv(256)
        except TimeoutError:
            continue
        except ConnectionResetError:
            closed = True
            break
        closed = not chunk
        received += len(chunk)
        assert health_seconds(embed_server.port) < 1.0
        time.sleep(0.1)
    sock.close()
    assert closed and received > 0
    deadline = time.monotonic() + 5
    while not (gone := [line for line in embed_server.lines[since:] if "client gone" in line]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert len(gone) == 1 and "TimeoutError writing the answer" in gone[0]


def _longest(fits) -> str:
    """The longest text of repeated words that ``fits``."""
    words = 1
    while fits("x " * (words + 1)):
        words += 1
    return "x " * words


def test_a_burst_of_texts_at_the_token_limit(embed_server, chat_server, decoder_bundle, tiny_bundle):
    from edgepipe.runtime.embedder import Embedder
    from edgepipe.runtime.generator import Generator

    embedder = Embedder.from_bundle(tiny_bundle.bundle_dir)
    limit = embedder.config.max_length
    text = _longest(lambda t: not embedder.token_count(t)[1])
    assert embedder.token_count(text) == (limit, False)
    generator = Generator.from_bundle(decoder_bundle("qwen2").root)
    context = generator.config.max_length
    prompt = _longest(lambda t: len(generator.encode_messages([{"role": "user", "content": t}])) < context)
    assert len(generator.encode_messages([{"role": "user", "content": prompt}])) == context - 1
    results: list[tuple[str, int, object]] = []

    def embed() -> None:
        payload = json.dumps({"input": [text] * 8, "encoding_format": "base64"}).encode()
        status, _, body = request(embed_server.port, "POST", "/v1/embeddings", payload)
        results.append(("embed", status, body["usage"]["prompt_tokens"]))

    def chat(content: str) -> None:
        payload = {"messages": [{"role": "user", "content": content}], "max_tokens": 5}
        status, _, body = request(chat_server.port, "POST", "/v1/chat/completions", json.dumps(payload).encode())
        outcome = body["choices"][0]["finish_reason"] if status == 200 else body["error"]["code"]
        results.append(("chat", status, outcome))

    threads = [threading.Thread(target=embed) for _ in range(12)]
    threads += [threading.Thread(target=chat, args=(prompt,)) for _ in range(6)]
    threads += [threading.Thread(target=chat, args=(prompt + "x x",)) for _ in range(6)]
    for thread in threads:
        thread.start()
    assert health_seconds(embed_server.port) < 1.0 and health_seconds(chat_server.port) < 1.0
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results, key=str) == sorted(
        [("embed", 200, 8 * limit)] * 12
        + [("chat", 200, "length")] * 6  # one token fits; the context is then full
        + [("chat", 400, "context_length_exceeded")] * 6,
        key=str,
    )


def test_a_client_that_leaves_a_stream_stops_its_generation(chat_server):
    since = len(chat_server.lines)
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 250,
            "stream": True,
            "temperature": 1.5,
            "seed": 1,
        }
    ).encode()
    with socket.create_connection(("127.0.0.1", chat_server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.sendall(post("/v1/chat/completions", body))
        assert sock.recv(64).startswith(b"HTTP/1.1 200 ")
    # Closed with a reset: the server's next write fails, the generation stops, the lock is free.
    deadline = time.monotonic() + 5
    while not (gone := [line for line in chat_server.lines[since:] if "client gone" in line]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert len(gone) == 1 and "writing the stream" in gone[0]
    status, _, reply = request(chat_server.port, "POST", "/v1/completions", b'{"prompt": "hi"}')
    assert status == 200 and reply["choices"][0]["text"] is not None


def _nested(depth: int) -> dict:
    schema: dict = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "array", "items": schema}
    return schema


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
# Schemas and tools aimed at the grammar: each a 400 naming the field, or (recursive) an answer, in seconds.
GRAMMAR_BOMBS = {
    "a 40 kB schema": ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(2000)}}}}},
        "response_format.json_schema.schema", "this server takes schemas of at most"),
    "a schema nested 50 deep": ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
        "schema": _nested(50)}}}, "response_format.json_schema.schema", "nests deeper than 40 levels"),
    "an enum of 3,000 strings": ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
        "schema": {"enum": [f"v{i}" for i in range(3000)]}}}}, None, None),
    "a recursive schema": ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
        "$ref": "#/$defs/n"}}}}, None, None),
    "a schema that recurses without end": ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}},
        "required": ["next"]}}, "$ref": "#/$defs/n"}}}}, "response_format", "the grammar library gives up on it"),
    "a schema that is not one": ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
        "schema": {"type": 7}}}}, "response_format.json_schema.schema", "not a schema this server can enforce"),
    "1,000 tools": ({"tools": [{**TOOL, "function": {"name": f"f{i}"}} for i in range(1000)]}, "tools",
        "1000 tools in one request; this server takes at most 128"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(GRAMMAR_BOMBS))
def test_schemas_and_tools_aimed_at_the_grammar(chat_server, case):
    extra, param, says = GRAMMAR_BOMBS[case]
    payload = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64, **extra})
    started = time.monotonic()
    status, _, body = request(chat_server.port, "POST", "/v1/chat/completions", payload, timeout=60)
    assert time.monotonic() - started < 30
    if param is None:  # the grammar holds: an answer, whole (it validates) or honestly cut
        assert status == 200 and body["choices"][0]["finish_reason"] in ("stop", "length"), body
        if body["choices"][0]["finish_reason"] == "stop":
            json.loads(body["choices"][0]["message"]["content"])
        return
    assert status == 400 and body["error"]["param"] == param and says in body["error"]["message"], body
