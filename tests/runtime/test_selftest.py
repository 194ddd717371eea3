"""``python <bundle> selftest``: the build's evaluation re-run from the data the bundle ships."""

import json
import shutil
import subprocess
import sys

import pytest


def run_bundle(root, *args):
    return subprocess.run([sys.executable, str(root), *args], capture_output=True, text=True, timeout=120)


def test_selftest_on_this_host_matches_the_build(tiny_bundle):
    root = tiny_bundle.bundle_dir
    assert {"selftest/texts.json", "selftest/reference.npy"} <= set(tiny_bundle.manifest["files"])
    proc = run_bundle(root, "selftest", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "edgepipe.selftest/1" and doc["passed"] is True
    build = tiny_bundle.manifest["accuracy"]["model"]
    assert doc["device"]["n"] == build["n"] == doc["build"]["n"]
    # The same machine and onnxruntime as the build: the same numbers.
    for key in ("min", "p5", "mean"):
        assert doc["device"][key] == pytest.approx(build[key], abs=1e-5)
    assert doc["bar"] == tiny_bundle.manifest["accuracy"]["bar"]
    text = run_bundle(root, "selftest")
    assert text.returncode == 0 and ": passes (worst text:" in text.stdout


def test_below_the_bar_exits_5_and_no_data_is_one_line(tiny_bundle, tmp_path):
    root = tmp_path / "strict"
    shutil.copytree(tiny_bundle.bundle_dir, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["accuracy"]["bar"] = 1.0  # as a stricter profile would ask: int8 is below it
    (root / "manifest.json").write_text(json.dumps(manifest))
    proc = run_bundle(root, "selftest")
    assert proc.returncode == 5 and ": FAILS (worst text:" in proc.stdout
    shutil.rmtree(root / "selftest")
    gone = run_bundle(root, "selftest")
    assert gone.returncode == 2 and gone.stdout == ""
    assert gone.stderr == ("error: this bundle ships no readable selftest/ data (built before selftest): rebuild it\n")
