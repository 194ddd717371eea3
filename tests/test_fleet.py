"""Fleet: `edgepipe push`/`pull` against a real registry (Debian's docker-registry, htpasswd auth),
read back by skopeo; on the device, `python BUNDLE update/rollback/service` with a fault battery."""

from __future__ import annotations

import filecmp
import http.client
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import registry as oci_registry
from click.testing import CliRunner

from edgepipe.cli import main
from edgepipe.runtime.integrity import bundle_files

pytestmark = pytest.mark.skipif(oci_registry.missing() is not None, reason=str(oci_registry.missing()))


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    started = oci_registry.start(tmp_path_factory.mktemp("registry"))
    yield started
    started.kill()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    for name in ("good", "other"):
        assert CliRunner().invoke(main, ["keygen", "--out", str(out / name)]).exit_code == 0
    return out


@pytest.fixture(scope="module")
def versions(tiny_bundle, keys, tmp_path_factory):
    """Two signed versions of one bundle: v2 differs in its manifest's name (and so its signature)."""
    root = tmp_path_factory.mktemp("versions")
    made = {}
    for version in ("v1", "v2"):
        dest = Path(shutil.copytree(tiny_bundle.bundle_dir, root / version / tiny_bundle.bundle_dir.name))
        manifest = json.loads((dest / "manifest.json").read_text())
        manifest["name"] = f"{manifest['name']}-{version}"
        (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        result = CliRunner().invoke(main, ["sign", str(dest), "--key", str(keys / "good" / "private.pem")])
        assert result.exit_code == 0, result.output
        made[version] = dest
    return made


@pytest.fixture
def logged_in(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(registry.docker_config(tmp_path / "docker")))
    return registry


def push(bundle: Path, target: str):
    return CliRunner().invoke(main, ["push", str(bundle), target])


def pull(target: str, out: Path, *extra: str):
    return CliRunner().invoke(main, ["pull", target, "--out", str(out), *extra])


def skopeo(registry, ref: str) -> dict:
    done = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", f"{oci_registry.USER}:{oci_registry.PASSWORD}",
         f"docker://{registry.host}/{ref}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def same_tree(a: Path, b: Path) -> bool:
    files_a, files_b = bundle_files(a), bundle_files(b)
    extra = ("manifest.json", "model.sig")
    return set(files_a) == set(files_b) and all(
        filecmp.cmp(a / rel, b / rel, shallow=False) for rel in [*files_a, *extra] if (a / rel).exists()
    )


def test_push_pull_round_trip_read_by_skopeo(logged_in, versions, keys, tmp_path):
    target = f"oci://{logged_in.host}/fleet/tiny:v1"
    pushed = push(versions["v1"], target)
    assert pushed.exit_code == 0, pushed.output
    digest = pushed.stdout.strip()
    manifest = skopeo(logged_in, "fleet/tiny:v1")  # an independent client reads what push wrote
    assert manifest["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    paths = {layer["annotations"]["org.cncf.model.filepath"] for layer in manifest["layers"]}
    assert paths == set(bundle_files(versions["v1"])) | {"manifest.json"}
    assert manifest["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    referrers = skopeo(logged_in, f"fleet/tiny:{digest.replace(':', '-')}")  # the tag-schema fallback
    kinds = {m["artifactType"] for m in referrers["manifests"]}
    assert kinds == {"application/vnd.cyclonedx+json", "application/vnd.dev.sigstore.bundle.v0.3+json"}
    for entry in referrers["manifests"]:
        assert skopeo(logged_in, f"fleet/tiny@{entry['digest']}")["subject"]["digest"] == digest
    out = tmp_path / "pulled"
    result = pull(target, out, "--public-key", str(keys / "good" / "public.pem"))
    assert result.exit_code == 0, result.output
    assert same_tree(versions["v1"], out)  # byte-identical, signature included
    assert push(versions["v1"], target).stdout.strip() == digest  # the same bundle, the same digest


def test_wrong_key_and_bad_credentials_change_nothing(logged_in, versions, keys, tmp_path, monkeypatch):
    target = f"oci://{logged_in.host}/fleet/tiny:v1"
    assert push(versions["v1"], target).exit_code == 0
    out = tmp_path / "pulled"
    result = pull(target, out, "--public-key", str(keys / "other" / "public.pem"))
    assert result.exit_code == 6 and "not made with the private key" in result.output
    assert not out.exists() and list(tmp_path.glob(".pulled*")) == []
    monkeypatch.setenv("DOCKER_CONFIG", str(logged_in.docker_config(tmp_path / "wrong", password="nope")))
    for result in (pull(target, out), push(versions["v1"], f"oci://{logged_in.host}/fleet/other:v1")):
        assert result.exit_code == 11 and "credentials refused" in result.output, result.output
    assert not out.exists()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "empty"))
    result = pull(target, out)
    assert result.exit_code == 11 and "has none for it" in result.output


def test_tampered_blob_is_refused(logged_in, versions, tmp_path):
    target = f"oci://{logged_in.host}/fleet/tampered:v1"
    assert push(versions["v1"], target).exit_code == 0
    layer = next(
        entry for entry in skopeo(logged_in, "fleet/tampered:v1")["layers"]
        if entry["annotations"]["org.cncf.model.filepath"] == "tokenizer/tokenizer.json"
    )  # fmt: skip
    blob = logged_in.blob_path(layer["digest"])
    original = blob.read_bytes()
    try:
        blob.write_bytes(original.replace(b"[UNK]", b"[UNX]", 1))
        out = tmp_path / "pulled"
        result = pull(target, out)
        assert result.exit_code == 6 and "does not match its digest" in result.output, result.output
        assert not out.exists() and list(tmp_path.glob(".pulled*")) == []
    finally:
        blob.write_bytes(original)


class _KillingProxy(http.server.ThreadingHTTPServer):
    """Forwards to the registry; kills it (SIGKILL) when the pull asks for its third file."""

    def __init__(self, registry) -> None:
        self.registry, self.blobs = registry, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(handler) -> None:  # noqa: N805
                if "/blobs/" in handler.path:
                    self.blobs += 1
                    if self.blobs == 4:  # the config, then two files, then the registry dies
                        self.registry.kill()
                try:
                    upstream = http.client.HTTPConnection(self.registry.host, timeout=10)
                    upstream.request("GET", handler.path, headers=dict(handler.headers))
                    response = upstream.getresponse()
                except OSError:
                    handler.close_connection = True
                    return
                body = response.read()
                handler.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        handler.send_header(key, value)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def test_registry_killed_mid_pull(logged_in, versions, tmp_path, monkeypatch):
    assert push(versions["v1"], f"oci://{logged_in.host}/fleet/tiny:v1").exit_code == 0
    proxy = _KillingProxy(logged_in)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{proxy.server_address[1]}"
    config = json.loads((Path(os.environ["DOCKER_CONFIG"]) / "config.json").read_text())
    config["auths"][host] = config["auths"][logged_in.host]
    (Path(os.environ["DOCKER_CONFIG"]) / "config.json").write_text(json.dumps(config))
    out = tmp_path / "pulled"
    try:
        result = pull(f"oci://{host}/fleet/tiny:v1", out)
    finally:
        proxy.shutdown()
        logged_in.start()
    assert proxy.blobs >= 4 and result.exit_code == 11, result.output
    assert "registry" in result.output and not out.exists() and list(tmp_path.glob(".pulled*")) == []


def bundle_cli(bundle: Path, *args: str, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(bundle), *args], capture_output=True, text=True, env=env, **kwargs)


def name_of(bundle: Path) -> str:
    return json.loads((bundle / "manifest.json").read_text())["name"]


@pytest.fixture
def device(logged_in, versions, keys, tmp_path):
    """A device running v1 (pulled), with v2 in the registry."""
    for version in ("v1", "v2"):
        assert push(versions[version], f"oci://{logged_in.host}/fleet/tiny:{version}").exit_code == 0
    running = tmp_path / "device" / "tiny"
    assert pull(f"oci://{logged_in.host}/fleet/tiny:v1", running).exit_code == 0
    return running, f"oci://{logged_in.host}/fleet/tiny:v2", keys / "good" / "public.pem"


def test_update_and_rollback(device, versions, keys):
    running, v2, public = device
    v1_name = name_of(running)
    refused = bundle_cli(running, "update", v2)  # a signed bundle takes only a checked update
    assert refused.returncode == 6 and "--public-key" in refused.stderr and name_of(running) == v1_name
    wrong = bundle_cli(running, "update", v2, "--public-key", str(keys / "other" / "public.pem"))
    assert wrong.returncode == 6 and "not made with the private key" in wrong.stderr
    assert name_of(running) == v1_name and not running.with_name("tiny.previous").exists()
    done = bundle_cli(running, "update", v2, "--public-key", str(public))
    assert done.returncode == 0, done.stderr
    assert name_of(running) == name_of(versions["v2"]) and name_of(running.with_name("tiny.previous")) == v1_name
    assert "selftest passed" in done.stderr
    assert bundle_cli(running, "verify", "--public-key", str(public)).returncode == 0
    back = bundle_cli(running, "rollback")
    assert back.returncode == 0 and name_of(running) == v1_name
    assert name_of(running.with_name("tiny.previous")) == name_of(versions["v2"])
    assert sorted(p.name for p in running.parent.iterdir()) == ["tiny", "tiny.previous"]


def test_killed_at_every_step_of_update_leaves_a_working_bundle(device):
    running, v2, public = device
    v1_name = name_of(running)
    steps = ["is sha256:", " 1/", "signature", "checked digests", "selftest passed", "swapped in"]
    for step in steps:
        process = subprocess.Popen(
            [sys.executable, str(running), "update", v2, "--public-key", str(public)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert process.stderr is not None
        for line in process.stderr:
            if step in line:
                process.send_signal(signal.SIGKILL)
                break
        process.wait()
        assert process.returncode == -signal.SIGKILL, f"update finished before the kill after {step!r}"
        verified = bundle_cli(running, "verify", "--public-key", str(public))
        assert verified.returncode == 0, (step, verified.stderr)
        answered = bundle_cli(running, "embed", "turn on the lights")
        assert answered.returncode == 0 and len(json.loads(answered.stdout)["embedding"]) > 0, step
        assert name_of(running) in (v1_name, name_of(running.parent / "tiny")), step
    finished = bundle_cli(running, "update", v2, "--public-key", str(public))  # a later update cleans up
    assert finished.returncode == 0, finished.stderr
    assert sorted(p.name for p in running.parent.iterdir()) == ["tiny", "tiny.previous"]


def test_service_unit(device, tmp_path):
    running, _, _ = device
    unit = tmp_path / "edgepipe-tiny.service"
    done = bundle_cli(running, "service", "--user", "--port", "8181", "--out", str(unit))
    assert done.returncode == 0, done.stderr
    text = unit.read_text()
    assert f"ExecStart={sys.executable} {running} serve --host 127.0.0.1 --port 8181" in text
    assert "WantedBy=default.target" in text and "Restart=on-failure" in text
    if shutil.which("systemd-analyze"):
        checked = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert "ExecStart" not in checked.stderr, checked.stderr


def test_token_auth_push_and_pull(versions, keys, tmp_path, monkeypatch):
    """A registry behind a token service (as GHCR, Harbor and Docker Hub are): push with oras-py's
    token flow, pull with the runtime's."""
    registry, tokens = oci_registry.start_with_tokens(tmp_path / "registry")
    try:
        monkeypatch.setenv("DOCKER_CONFIG", str(registry.docker_config(tmp_path / "docker")))
        target = f"oci://{registry.host}/fleet/tiny:v1"
        pushed = push(versions["v1"], target)
        assert pushed.exit_code == 0, pushed.output
        out = tmp_path / "pulled"
        result = pull(target, out, "--public-key", str(keys / "good" / "public.pem"))
        assert result.exit_code == 0, result.output
        assert same_tree(versions["v1"], out) and tokens.issued >= 2
        monkeypatch.setenv("DOCKER_CONFIG", str(registry.docker_config(tmp_path / "wrong", password="nope")))
        refused = pull(target, tmp_path / "again")
        assert refused.exit_code == 11 and "credentials" in refused.output, refused.output
    finally:
        tokens.stop()
        registry.kill()
