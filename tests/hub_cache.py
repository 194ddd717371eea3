"""The Hugging Face hub, locally: a hub cache laid out as huggingface_hub writes it, and a loopback
HTTP server answering the hub API calls `edgepipe build --download` makes (no network)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse


def model_files(root: Path) -> dict[str, bytes]:
    """Every file of a model directory by its relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def commit_of(text: str) -> str:
    """A 40-hex commit hash (stands in for a git commit)."""
    return hashlib.sha1(text.encode()).hexdigest()


def add_snapshot(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, ref: str | None = "main") -> Path:
    """``models--org--name/``: each file's bytes in ``blobs/<sha256>``, ``snapshots/<commit>/``
    holding relative links to them, and ``refs/<ref>`` naming the commit."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


class FakeHub(http.server.BaseHTTPRequestHandler):
    """``/api/models/{repo}/tree/{revision}`` (the file list), ``/api/models/{repo}/revision/
    {revision}`` (the commit) and ``/{repo}/resolve/{revision}/{file}`` (HEAD and GET)."""

    repos: dict[str, tuple[str, dict[str, bytes]]] = {}  # repo id -> (commit, files)
    fetched: list[str] = []  # "repo/file" of every file body sent

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        parts = unquote(urlparse(self.path).path).strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        repo_id = "/".join(parts[2:4] if api else parts[:2])
        if repo_id not in self.repos:
            return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, body)
        commit, files = self.repos[repo_id]
        if api and parts[4:5] == ["tree"]:
            listing = [{"type": "file", "path": f, "size": len(d), "oid": commit} for f, d in files.items()]
            return self._send(200, json.dumps(listing).encode(), {}, body)
        if api and parts[4:5] == ["revision"]:
            siblings = [{"rfilename": f} for f, d in files.items()]
            info = {"id": repo_id, "sha": commit, "siblings": siblings}
            return self._send(200, json.dumps(info).encode(), {}, body)
        name = "/".join(parts[4:])
        if parts[2:3] != ["resolve"] or name not in files:
            return self._send(404, b"{}", {"X-Error-Code": "EntryNotFound"}, body)
        data = files[name]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        if body:
            self.fetched.append(f"{repo_id}/{name}")
        self._send(200, data, headers, body)

    def _send(self, status: int, data: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


@contextmanager
def fake_hub(repos: dict[str, tuple[str, dict[str, bytes]]]) -> Iterator[tuple[str, list[str]]]:
    """A FakeHub serving ``repos`` on a loopback port: its endpoint URL and the fetched files."""
    handler = type("Hub", (FakeHub,), {"repos": repos, "fetched": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.fetched
    finally:
        server.shutdown()
        server.server_close()
