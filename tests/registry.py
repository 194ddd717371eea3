"""A real OCI registry for tests: Debian's docker-registry (Distribution 2.8) on a loopback port,
with htpasswd auth, its storage and config in a temp dir; and a Docker config that logs in to it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REGISTRY = "/usr/bin/docker-registry"
USER, PASSWORD = "fleet", "s3cret-fleet"


def missing() -> str | None:
    """Why the registry tests cannot run here, or None."""
    if not os.access(REGISTRY, os.X_OK):
        return "needs Debian's docker-registry (apt-get install docker-registry apache2-utils skopeo; make test-deps)"
    if not shutil.which("skopeo"):
        return "needs skopeo (apt-get install skopeo)"
    if not shutil.which("htpasswd"):
        return "needs htpasswd (apt-get install apache2-utils)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    process: subprocess.Popen
    port: int
    root: Path
    config: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def docker_config(self, folder: Path, user: str = USER, password: str = PASSWORD) -> Path:
        """A DOCKER_CONFIG folder whose config.json logs in to this registry."""
        folder.mkdir(parents=True, exist_ok=True)
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        (folder / "config.json").write_text(json.dumps({"auths": {self.host: {"auth": auth}}}))
        return folder

    def blob_path(self, digest: str) -> Path:
        hexdigest = digest.removeprefix("sha256:")
        return self.root / "data/docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def start(self) -> None:
        """(Re)start on the same port and storage."""
        log = open(self.root / "registry.log", "ab")  # noqa: SIM115 - the process keeps it
        self.process = subprocess.Popen([REGISTRY, "serve", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    return
            except OSError:
                time.sleep(0.1)
                continue
            return
        raise RuntimeError(f"docker-registry did not start: {(self.root / 'registry.log').read_text()[-2000:]}")


def start(root: Path) -> Registry:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    subprocess.run(["htpasswd", "-Bbc", str(root / "htpasswd"), USER, PASSWORD], check=True, capture_output=True)
    config = root / "config.yml"
    config.write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root / "data"}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
auth:
  htpasswd:
    realm: edgepipe-tests
    path: {root / "htpasswd"}
"""
    )
    registry = Registry(None, port, root, config)  # type: ignore[arg-type]
    registry.start()
    return registry
