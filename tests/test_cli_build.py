"""`edgepipe build` through the CLI: JSON summary, exit codes, and the output dir after failures."""

import fcntl
import json
import shutil

import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from edgepipe.runtime.integrity import sha256_file


def build(*args):
    return CliRunner().invoke(main, ["build", "--bench-runs", "2", *args])


def snapshot(out):
    """Every file in ``out`` with its sha256, but the empty per-bundle lock files."""
    files = (p for p in sorted(out.rglob("*")) if p.is_file() and p.suffix != ".lock")
    return {p.relative_to(out).as_posix(): sha256_file(p) for p in files}


@pytest.fixture
def published(tiny_bundle, tmp_path):
    """An output dir already holding a good bundle and archive."""
    out = tmp_path / "dist"
    out.mkdir()
    shutil.copytree(tiny_bundle.bundle_dir, out / tiny_bundle.bundle_dir.name)
    shutil.copy(tiny_bundle.archive, out / tiny_bundle.archive.name)
    return out


def test_json_summary(tiny_bert, profiles_dir, tmp_path):
    result = build(
        "--model",
        str(tiny_bert),
        "--target",
        "rpi5",
        "--profile",
        "tiny-int8",
        "--profiles-dir",
        str(profiles_dir),
        "--out",
        str(tmp_path / "o"),
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bundle_dir"].endswith("tiny-bert-rpi5") and summary["target"] == "rpi5"
    assert 0.5 <= summary["accuracy"]["min"] <= 1.0 and summary["latency_p50_ms"] > 0
    assert summary["latency_measured_on"].startswith("build host")
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")) == [
        "tiny-bert-rpi5",
        "tiny-bert-rpi5.tar.gz",
    ]


def test_accuracy_guard_fails_and_keeps_the_previous_bundle(published, tiny_bert_master, tmp_path):
    strict = tmp_path / "profiles"
    strict.mkdir()
    (strict / "tiny-int8.yaml").write_text(
        "name: tiny-int8\ndescription: impossible bar\nmethod: dynamic-int8\n"
        "quantization: {op_types: [MatMul]}\naccuracy: {min: 1.0}\n"
    )
    before = snapshot(published)
    result = build(
        "--model",
        str(tiny_bert_master),
        "--target",
        "laptop-avx2",
        "--profile",
        "tiny-int8",
        "--profiles-dir",
        str(strict),
        "--out",
        str(published),
    )
    assert result.exit_code == 5
    assert (
        # The tiny model's int8 copy scores ~0.99986 with exact int8 kernels, less on AVX2's
        # saturating ones (conftest.make_tiny_bert), so no one value is asserted: the bar of 1.0
        # is missed however close it comes, since the guard compares the unrounded minimum.
        "no recipe met its bar and the target's budgets (1 tried, best min cosine" in result.output
    )
    assert "< bar 1.0" in result.output  # the table of what was tried
    assert "Traceback" not in result.output
    assert snapshot(published) == before
    assert not [p for p in published.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--target", "rpi4"], 3, "unknown target 'rpi4': did you mean 'rpi5'?"),
        (["--target", "rpi5", "--profile", "jetson-fp16"], 3, "needs TensorrtExecutionProvider"),
        (
            ["--target", "rpi5", "--model", "/nonexistent/model"],
            4,
            "model directory does not exist",
        ),
        (["--target", "rpi5", "--profile", "nope"], 3, "unknown profile 'nope'"),
    ],
)
def test_bad_input_exit_codes(tmp_path, tiny_bert_master, args, code, message):
    if "--model" not in args:
        args = [*args, "--model", str(tiny_bert_master)]
    result = build(*args, "--out", str(tmp_path / "o"))
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("tiny-bert*"))


def test_second_build_into_a_locked_output_fails_cleanly(published, tiny_bert_master):
    before = snapshot(published)
    with open(published / ".tiny-bert-laptop-avx2.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        result = build("--model", str(tiny_bert_master), "--target", "laptop-avx2", "--out", str(published))
    assert result.exit_code == 8
    assert "another edgepipe build is writing this bundle" in result.output
    assert snapshot(published) == before


def test_rebuild_replaces_the_bundle_atomically(published, tiny_bert_master, profiles_dir):
    result = build(
        "--model",
        str(tiny_bert_master),
        "--target",
        "laptop-avx2",
        "--profile",
        "tiny-int8",
        "--profiles-dir",
        str(profiles_dir),
        "--out",
        str(published),
    )
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["verify", str(published / "tiny-bert-laptop-avx2")]).exit_code == 0
    assert CliRunner().invoke(main, ["verify", str(published / "tiny-bert-laptop-avx2.tar.gz")]).exit_code == 0
    assert not [p for p in published.iterdir() if ".tmp" in p.name]


def test_targets_and_profiles_commands():
    targets = CliRunner().invoke(main, ["targets"])
    assert targets.exit_code == 0 and all(n in targets.output for n in ("rpi5", "laptop-avx2", "jetson-orin"))
    profiles = CliRunner().invoke(main, ["profiles"])
    assert profiles.exit_code == 0 and "x86-avx2-int8" in profiles.output


def test_from_scratch_rebuilds_without_bench_are_byte_identical(tiny_bert_master, profiles_dir, tmp_path):
    archives = []
    for run in ("a", "b"):
        result = build(
            "--model",
            str(tiny_bert_master),
            "--target",
            "rpi5",
            "--profile",
            "tiny-int8",
            "--profiles-dir",
            str(profiles_dir),
            "--out",
            str(tmp_path / run),
            "--no-cache",
            "--no-bench",
            "--json",
        )
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout.strip().splitlines()[-1])
        assert summary["cached_stages"] == [] and summary["latency_p50_ms"] is None
        archives.append(sha256_file(tmp_path / run / "tiny-bert-rpi5.tar.gz"))
    assert archives[0] == archives[1]
    manifest = json.loads((tmp_path / "a" / "tiny-bert-rpi5" / "manifest.json").read_text())
    assert manifest["bench"] is None and "BENCH.md" not in manifest["files"]
    assert "Not measured at build time" in (tmp_path / "a" / "tiny-bert-rpi5" / "README.md").read_text()


def test_search_needs_the_bench(tiny_bert_master, tmp_path):
    result = build(
        "--model", str(tiny_bert_master), "--target", "rpi5", "--search", "--no-bench", "--out", str(tmp_path)
    )
    assert result.exit_code == 3 and "--search picks the fastest recipe" in result.output
