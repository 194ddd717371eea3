"""The bundle's own command line, run as a device would: `python <bundle> ...` in a subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest


def run_bundle(bundle, *args, stdin=b""):
    return subprocess.run([sys.executable, str(bundle), *args], input=stdin, capture_output=True, timeout=120)


def test_embed_prints_one_normalised_vector_per_text(tiny_bundle):
    proc = run_bundle(tiny_bundle.bundle_dir, "embed", "turn on the lights", "ok")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 2
    for line in lines:
        vector = np.array(json.loads(line)["embedding"])
        assert vector.shape == (32,)
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_stdin_lines_and_file(tiny_bundle, tmp_path):
    proc = run_bundle(tiny_bundle.bundle_dir, "embed", "-", stdin=b"one\ntwo\nthree\n")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3
    texts = tmp_path / "texts.txt"
    texts.write_text("alpha\nbeta\n")
    proc = run_bundle(tiny_bundle.bundle_dir, "embed", "--file", str(texts))
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 2


def test_long_text_is_truncated_and_says_so(tiny_bundle):
    proc = run_bundle(tiny_bundle.bundle_dir, "embed", "word " * 500)
    record = json.loads(proc.stdout)
    assert record["truncated"] is True and record["tokens"] == 64


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"fine\n\xff\xfe broken\n", "stdin line 2 is not valid UTF-8"),
        (b"nul \x00 byte\n", "stdin line 1 contains a NUL byte"),
        (b"", "no text given"),
    ],
)
def test_bad_input_is_one_line_and_exit_4(tiny_bundle, stdin, message):
    proc = run_bundle(tiny_bundle.bundle_dir, "embed", "-", stdin=stdin)
    assert proc.returncode == 4
    assert proc.stderr.decode().strip() == f"error: {message}" or message in proc.stderr.decode()
    assert b"Traceback" not in proc.stderr and proc.stdout == b""


def test_runtime_never_imports_the_build_side(tiny_bundle):
    code = (
        "import runpy, sys; sys.argv = ['b', 'embed', 'hello'];"
        f"sys.path.insert(0, {str(tiny_bundle.bundle_dir)!r});"
        "import contextlib, io\n"
        "try:\n"
        f"    runpy.run_path({str(tiny_bundle.bundle_dir)!r}, run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "bad = [m for m in ('torch', 'transformers', 'optimum', 'edgepipe', 'onnx') if m in sys.modules]\n"
        "print('LOADED', bad, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert "LOADED []" in proc.stderr.decode(), proc.stderr.decode()


def test_bundle_verify_and_info(tiny_bundle):
    proc = run_bundle(tiny_bundle.bundle_dir, "verify")
    assert proc.returncode == 0 and proc.stdout.decode().startswith("ok: ")
    info = json.loads(run_bundle(tiny_bundle.bundle_dir, "info").stdout)
    assert info["target"]["name"] == "laptop-avx2" and info["model"]["path"] == "model/model.onnx"


def test_missing_requirements_are_one_line_naming_the_fix(tiny_bundle):
    # -S: no site-packages, as on a device before `pip install -r requirements.txt`.
    proc = subprocess.run(
        [sys.executable, "-S", str(tiny_bundle.bundle_dir), "embed", "hi"],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 3
    err = proc.stderr.decode().strip()
    assert err.startswith("error: this bundle needs ") and err.endswith("requirements.txt")
    assert "Traceback" not in err and "\n" not in err
    verify = subprocess.run(
        [sys.executable, "-S", str(tiny_bundle.bundle_dir), "verify"],
        capture_output=True,
        timeout=60,
    )
    assert verify.returncode == 0  # integrity checks need nothing but the standard library


@pytest.mark.parametrize("command", [["info"], ["embed", "one", "two"]])
def test_a_reader_that_leaves_ends_the_command_quietly(tiny_bundle, command):
    proc = subprocess.Popen(
        [sys.executable, str(tiny_bundle.bundle_dir), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head` does once it has read enough
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert b"Traceback" not in stderr
