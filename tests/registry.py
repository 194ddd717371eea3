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


class TokenServer:
    """A Docker token service for a registry in ``auth: token`` mode: checks the htpasswd user over
    Basic auth and issues an ES256 JWT whose x5c certificate the registry trusts (rootcertbundle)."""

    def __init__(self, root: Path) -> None:
        import datetime
        import http.server
        import threading

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgepipe-tests-token")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.bundle = root / "token-ca.pem"
        self.bundle.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.issued = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                import urllib.parse

                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                body = json.dumps({"token": server.token(query.get("scope", []))}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def token(self, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        access = []
        for scope in " ".join(scopes).split():
            kind, _, rest = scope.partition(":")
            repo, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": repo, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": "edgepipe-tests", "sub": USER, "aud": "edgepipe-registry", "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": str(now) + str(self.issued), "access": access}  # fmt: skip
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        self.issued += 1
        return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def stop(self) -> None:
        self.httpd.shutdown()


def start_with_tokens(root: Path) -> tuple[Registry, TokenServer]:
    """A registry that sends clients to a token service (``Www-Authenticate: Bearer``)."""
    root.mkdir(parents=True, exist_ok=True)
    tokens = TokenServer(root)
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        f"""version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {root / "data"}
http:
  addr: 127.0.0.1:{port}
auth:
  token:
    realm: {tokens.realm}
    service: edgepipe-registry
    issuer: edgepipe-tests
    rootcertbundle: {tokens.bundle}
"""
    )
    registry = Registry(None, port, root, config)  # type: ignore[arg-type]
    registry.start()
    return registry, tokens
