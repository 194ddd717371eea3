"""`edgepipe bench --import FILE BUNDLE`: a device's result recorded as device_bench, checked first;
and how `--remote` reads its [user@]host[:port]."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from edgepipe.runtime.integrity import verify_dir


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory) -> Path:
    """A copy of the shared tiny bundle (and its archive), ours to record in."""
    out = tmp_path_factory.mktemp("import")
    shutil.copytree(tiny_bundle.bundle_dir, out / tiny_bundle.bundle_dir.name)
    shutil.copy(tiny_bundle.archive, out / tiny_bundle.archive.name)
    return out / tiny_bundle.bundle_dir.name


@pytest.fixture(scope="module")
def device_json(bundle, tmp_path_factory) -> Path:
    """What `python BUNDLE bench --json > dev.json` writes on the device (here: this host)."""
    proc = subprocess.run(
        [sys.executable, str(bundle), "bench", "--json", "--seq-lens", "8", "--runs", "2", "--warmup", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    path = tmp_path_factory.mktemp("device") / "dev.json"
    path.write_text(proc.stdout)
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root.parent)): p.read_bytes() for p in root.parent.rglob("*") if p.is_file()}


def test_refuses_a_result_of_another_model(bundle, device_json, tmp_path):
    other = json.loads(device_json.read_text())
    other["models"]["model"]["sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "junk.json").write_text('{"schema": "something/1"}')
    before = snapshot(bundle)
    refused = cli("bench", "--import", str(tmp_path / "other.json"), str(bundle))
    assert refused.exit_code == 6, refused.output
    assert "measured another model (sha256 000000000000...)" in refused.stderr
    assert "it belongs to another bundle" in refused.stderr
    junk = cli("bench", "--import", str(tmp_path / "junk.json"), str(bundle))
    assert junk.exit_code == 3 and "is not an edgepipe.bench document" in junk.stderr
    both = cli("bench", "--import", str(device_json), "--remote", "pi@pi", str(bundle))
    assert both.exit_code == 2 and "--import and --remote contradict each other" in both.stderr
    assert snapshot(bundle) == before


def test_import_records_device_bench_beside_the_host_numbers(bundle, device_json):
    host_bench = json.loads((bundle / "manifest.json").read_text())["bench"]
    result = cli("bench", "--import", str(device_json), str(bundle))
    assert result.exit_code == 0, result.output
    assert "as device_bench" in result.stderr and f"{bundle.name}.tar.gz" in result.stderr
    manifest = json.loads((bundle / "manifest.json").read_text())
    device = manifest["device_bench"]
    assert device["measured_on"] == "device" and device["probe"]["schema"] == "edgepipe.probe/1"
    assert device["results"] == json.loads(device_json.read_text())["results"]
    assert manifest["bench"] == host_bench  # the host's numbers stay, labelled as theirs
    assert verify_dir(bundle) == []
    archive = bundle.parent / f"{bundle.name}.tar.gz"
    assert cli("verify", str(archive)).exit_code == 0
    assert "On the device (" in (bundle / "README.md").read_text()
    check = json.loads(cli("check", str(bundle), "--json").stdout)
    assert check["measured_on"].startswith("device (")


def test_remote_spec():
    from edgepipe.bench.device import Remote
    from edgepipe.errors import ConfigError

    assert Remote.parse("pi@raspberrypi.local") == Remote("raspberrypi.local", "pi")
    assert Remote.parse("u@[::1]:2222") == Remote("::1", "u", 2222)
    for bad in ("-oProxyCommand=x", "pi@-oProxyCommand=x", "a b", "host:0", "host:70000", ""):
        with pytest.raises(ConfigError, match="is not \\[user@\\]host\\[:port\\]"):
            Remote.parse(bad)


def test_usage_errors_are_exit_2(bundle, device_json):
    for args in (
        ["--import", str(device_json), "--no-write"],
        ["--identity", str(device_json)],
        ["--baseline-model", str(device_json), "--no-baseline"],  # raised inside handle_errors
    ):
        result = cli("bench", *args, str(bundle))
        assert result.exit_code == 2 and "internal error" not in result.output, result.output
