"""A bundle's `serve` as a real process on a loopback port, its log read as it is written."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path


class Server:
    """``python BUNDLE serve --port 0 ARGS``; every stderr line is kept in ``lines``."""

    def __init__(self, root: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(root), "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        # Read the log as it comes: a full pipe would block the server's log writes.
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 60
        while not self.lines and time.monotonic() < deadline and self.proc.poll() is None:
            time.sleep(0.05)
        match = re.search(r"on http://127\.0\.0\.1:(\d+)$", self.lines[0] if self.lines else "")
        if not match:
            self.stop()
            raise AssertionError(f"server did not start: {self.lines}")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def threads(self) -> int:
        """The server process's threads now (Linux)."""
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def requests_logged(self, since: int, expect: int = 1) -> list[str]:
        """Log lines after the first ``since``, without the /health checks', once ``expect`` are
        there (a line is written after its answer is sent) or 5 s have passed."""
        deadline = time.monotonic() + 5
        while True:
            lines = [line for line in self.lines[since:] if '"GET /health ' not in line]
            if len(lines) >= expect or time.monotonic() > deadline:
                return lines
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.reader.join(timeout=10)


def request(port, method, path, body=None, headers=None, timeout=30):
    """(status, headers, JSON body) of one request on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()


def health_seconds(port: int) -> float:
    """How long GET /health took; AssertionError unless it answered 200."""
    started = time.monotonic()
    status, _, body = request(port, "GET", "/health", timeout=5)
    assert status == 200 and body["status"] == "ok", body
    return time.monotonic() - started
