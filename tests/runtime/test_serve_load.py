"""A bounded load test on loopback: /health answers under a second while 64 connections embed and
64 generate. Bounded counts (64 x 4 embeddings, 64 x 2 chat completions), a deadline, and it stops
by itself; the one timing asserted is the /health bound the server promises."""

import http.client
import json
import os
import threading
import time

import pytest
from serving import Server, health_seconds

CONNECTIONS = 64
DEADLINE_S = 120
# EDGEPIPE_LOAD_ROUNDS=5 pytest -s ...: run the load several times and print each round's numbers.
ROUNDS = int(os.environ.get("EDGEPIPE_LOAD_ROUNDS", "1"))


@pytest.fixture(scope="module")
def servers(tiny_bundle, decoder_bundle):
    started = [Server(tiny_bundle.bundle_dir), Server(decoder_bundle("qwen2").root)]
    yield started
    for server in started:
        server.stop()


def client(port: int, path: str, payload: dict, times: int, statuses: list[int]) -> None:
    """``times`` requests on one keep-alive connection; each status appended."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE_S)
    try:
        for _ in range(times):
            conn.request("POST", path, body=json.dumps(payload).encode())
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_health_stays_under_a_second_while_64_connections_embed_and_64_generate(servers, round_):
    embed, chat = servers
    statuses: list[int] = []
    texts = {"input": ["turn on the kitchen lights and the radio"] * 8, "model": "m"}
    messages = {
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    load = [
        threading.Thread(target=client, args=(embed.port, "/v1/embeddings", texts, 4, statuses), daemon=True)
        for _ in range(CONNECTIONS)
    ] + [
        threading.Thread(
            target=client,
            args=(chat.port, "/v1/chat/completions", messages, 2, statuses),
            daemon=True,
        )
        for _ in range(CONNECTIONS)
    ]
    for thread in load:
        thread.start()
    slowest, checks, deadline = 0.0, 0, time.monotonic() + DEADLINE_S
    while any(t.is_alive() for t in load) and time.monotonic() < deadline:
        slowest = max(slowest, health_seconds(embed.port), health_seconds(chat.port))
        checks += 1
        time.sleep(0.05)
    for thread in load:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in load), "the load did not finish by its deadline"
    assert sorted(statuses) == [200] * (CONNECTIONS * 4 + CONNECTIONS * 2)
    print(f"round {round_}: {len(statuses)} answers, /health {checks} checks, slowest {slowest:.3f} s")
    assert checks >= 3 and slowest < 1.0, (checks, slowest)
    for server in servers:
        assert not [line for line in server.lines if '" 500 ' in line or "Traceback" in line]
