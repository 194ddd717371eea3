"""`edgepipe bench --remote`: a real sshd on loopback as this user, the "device" being this machine."""

from __future__ import annotations

import glob
import json
import shutil
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from edgepipe.runtime.integrity import verify_dir
from tests.sshd import find_sshd, free_port, start_sshd

pytestmark = pytest.mark.skipif(
    find_sshd() is None, reason="no sshd: `make test-deps` installs Debian's openssh-server"
)
FAST = ("--seq-lens", "8", "--runs", "2", "--warmup", "0", "--no-baseline")


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(tiny_bundle.bundle_dir, out / tiny_bundle.bundle_dir.name)
    shutil.copy(tiny_bundle.archive, out / tiny_bundle.archive.name)
    return out / tiny_bundle.bundle_dir.name


def remote(server, bundle: Path, *args: str, python: str = sys.executable):
    return cli(
        "bench",
        str(bundle),
        "--remote",
        f"127.0.0.1:{server.port}",
        "--ssh-config",
        str(server.ssh_config),
        "--identity",
        str(server.identity),
        "--remote-python",
        python,
        *FAST,
        *args,
    )


def snapshot(bundle: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in bundle.parent.rglob("*") if p.is_file()}


def workdirs() -> set[str]:
    return set(glob.glob("/tmp/edgepipe-bench.*"))


def test_bench_remote_records_the_devices_numbers(sshd, bundle):
    before = workdirs()
    result = remote(sshd, bundle, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    device = manifest["device_bench"]
    assert device == json.loads(result.stdout)
    assert device["measured_on"] == "device" and device["probe"]["target"] == "laptop-avx2"
    assert device["results"][0]["seq_len"] == 8 and device["results"][0]["model"]["runs"] == 2
    assert device["models"]["model"]["sha256"] == manifest["model"]["sha256"]
    assert verify_dir(bundle) == [] and workdirs() == before  # the device's temp dir is gone
    assert cli("verify", str(bundle.parent / f"{bundle.name}.tar.gz")).exit_code == 0
    assert "127.0.0.1: benchmarking" in result.stderr
    assert device["selftest"]["passed"] is True and device["selftest"]["device"]["n"] > 0
    rows = {r["budget"]: r for r in json.loads(cli("check", str(bundle), "--json").stdout)["budgets"]}
    assert rows["device min_cosine"]["status"] == "ok"
    assert rows["peak RSS MB"]["source"].startswith("device (")


def test_unreachable_or_no_python_is_one_line_exit_7_and_nothing_changes(sshd, bundle, tmp_path):
    before = snapshot(bundle)
    printed = remote(sshd, bundle, "--no-write")  # measured on the device, printed, not recorded
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["measured_on"] == "device" and snapshot(bundle) == before
    nobody = cli(
        "bench",
        str(bundle),
        "--remote",
        f"127.0.0.1:{free_port()}",
        "--ssh-config",
        str(sshd.ssh_config),
        "--identity",
        str(sshd.identity),
    )
    assert nobody.exit_code == 7
    assert "error: device 127.0.0.1: SSH failed (unreachable" in nobody.stderr
    missing = remote(sshd, bundle, python="/nonexistent/python3")
    assert missing.exit_code == 7 and "no Python at `/nonexistent/python3`" in missing.stderr
    old = tmp_path / "python3.8"
    old.write_text("#!/bin/sh\necho 3 8\n")
    old.chmod(0o755)
    too_old = remote(sshd, bundle, python=str(old))
    assert too_old.exit_code == 7
    assert "Python 3.8 at `" in too_old.stderr and "needs 3.9 or newer" in too_old.stderr
    for result in (nobody, missing, too_old):
        assert result.stderr.count("error:") == 1
    assert snapshot(bundle) == before


def test_sshd_dying_mid_bench_is_exit_7_and_the_bundle_untouched(bundle, tmp_path):
    server = start_sshd(tmp_path / "dying-sshd")
    before, dirs = snapshot(bundle), workdirs()
    killed: list[bool] = []
    watcher = threading.Thread(
        target=lambda: killed.append(server.kill_sessions_running(sys.executable, " bench --json", 60))
    )
    watcher.start()
    try:
        # Long enough to be caught running; bounded if it were not.
        result = cli(
            "bench",
            str(bundle),
            "--remote",
            f"127.0.0.1:{server.port}",
            "--ssh-config",
            str(server.ssh_config),
            "--identity",
            str(server.identity),
            "--remote-python",
            sys.executable,
            "--seq-lens",
            "8",
            "--runs",
            "1000000",
            "--max-seconds",
            "60",
            "--no-baseline",
        )
    finally:
        watcher.join()
        server.stop()
        for leftover in workdirs() - dirs:  # the device could not clean up: it was gone
            shutil.rmtree(leftover, ignore_errors=True)
    assert killed == [True]
    assert result.exit_code == 7, result.output
    assert "error: device 127.0.0.1: SSH failed (unreachable, or the connection dropped)" in (result.stderr)
    assert snapshot(bundle) == before
