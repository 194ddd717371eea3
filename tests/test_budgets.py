"""`edgepipe check` and `edgepipe compare`: budgets and limits as CI gates, on bundles built here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from tests.decoders import make_tiny_decoder


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def variant(bundle: Path, dest: Path, change) -> Path:
    """A copy of ``bundle`` whose manifest ``change(manifest)`` edited: another build's numbers."""
    shutil.copytree(bundle, dest)
    path = dest / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    return dest


@pytest.fixture(scope="module")
def decoder_bundle(tmp_path_factory) -> Path:
    """A tiny Llama built for rpi5 (fp32, no bench: nothing measured yet)."""
    root = tmp_path_factory.mktemp("budget-decoder")
    model = make_tiny_decoder("llama", root / "tiny-llama")
    result = cli(
        "build",
        "--model",
        str(model),
        "--target",
        "rpi5",
        "--profile",
        "fp32",
        "--out",
        str(root / "dist"),
        "--no-bench",
        "--json",
    )
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout.strip().splitlines()[-1])["bundle_dir"])


def test_check_passes_on_the_host_measurement_labelled(tiny_bundle):
    result = cli("check", str(tiny_bundle.bundle_dir), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["measured_on"] == "build host (not the device)" and doc["ok"]
    rows = {r["budget"]: r for r in doc["budgets"]}
    assert set(rows) == {"model size MB", "peak RSS MB", "p95 latency ms"}
    assert rows["p95 latency ms"]["limit"] == "<= 30" and rows["peak RSS MB"]["limit"] == "<= 1024"
    assert all(r["status"] == "ok" for r in rows.values())
    # The tiny model reads 64 tokens at most.
    assert rows["p95 latency ms"]["source"].endswith("batch 1 x 64")
    # The build's bench timed the fp32 export in the same process: its memory counts too.
    source = rows["peak RSS MB"]["source"]
    assert source == "build host (not the device), the fp32 baseline loaded too"


def test_check_exits_9_with_a_table_when_a_budget_breaks(tiny_bundle, tmp_path):
    def tight(manifest):
        manifest["target"]["budgets"].update(ram_mb=1, latency_ms=0.0001)

    broken = variant(tiny_bundle.bundle_dir, tmp_path / "tight", tight)
    result = cli("check", str(broken))
    assert result.exit_code == 9
    assert "broken" in result.stdout and "peak RSS MB" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "error: tight breaks its target's budget for peak RSS MB, p95 latency ms "
        "(measured on the build host (not the device))"
    )


def test_check_prefers_the_device_and_gates_decode_speed(decoder_bundle, tmp_path):
    result = cli("check", str(decoder_bundle), "--json")
    assert result.exit_code == 0, result.output
    rows = {r["budget"]: r for r in json.loads(result.stdout)["budgets"]}
    assert rows["decode tokens/s"]["status"] == "not measured"
    assert rows["model size MB"]["limit"] == "<= 1000"  # generation_model_size_mb

    def slow_device(manifest):
        manifest["device_bench"] = {
            "schema": "edgepipe.bench/2",
            "onnxruntime": "1.27.0",
            "peak_rss_mb": 300.0,
            "machine": {"cpu": "Cortex-A76"},
            "probe": {"cpu": "Cortex-A76"},
            "results": [
                {"context_len": 512, "decode_tokens_per_s": 2.0},
                {"context_len": 128, "decode_tokens_per_s": 4.5},
            ],
        }

    slow = variant(decoder_bundle, tmp_path / "slow", slow_device)
    result = cli("check", str(slow), "--json")
    assert result.exit_code == 9
    doc = json.loads(result.stdout)
    assert doc["measured_on"] == "device (Cortex-A76, onnxruntime 1.27.0)"
    rows = {r["budget"]: r for r in doc["budgets"]}
    assert rows["decode tokens/s"] == {
        "budget": "decode tokens/s",
        "limit": ">= 5",
        "measured": 4.5,
        "status": "broken",
        "source": "device (Cortex-A76, onnxruntime 1.27.0), context 128",
    }
    assert rows["peak RSS MB"]["status"] == "ok"


def test_compare_reports_deltas_and_exits_9_past_its_limits(tiny_bundle, tmp_path):
    old = tiny_bundle.bundle_dir

    def worse(manifest):
        manifest["accuracy"]["model"]["min"] -= 0.01
        for r in manifest["bench"]["results"]:
            r["model"]["p50_ms"] *= 1.25

    new = variant(old, tmp_path / "worse", worse)
    result = cli("compare", str(old), str(new), "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["metric"] for r in rows] == [
        "min cosine",
        "model size MB",
        "p50 latency ms (build host (not the device))",
    ]
    assert rows[0]["change"] == pytest.approx(0.01) and rows[2]["change"] == pytest.approx(1.25)
    ok = cli("compare", str(old), str(new), "--max-accuracy-drop", "0.02", "--max-slowdown", "1.3")
    assert ok.exit_code == 0, ok.output
    bad = cli("compare", str(old), str(new), "--max-accuracy-drop", "0.002", "--max-slowdown", "1.1")
    assert bad.exit_code == 9
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: worse is past the limit for min cosine, p50 latency ms (build host (not the device))"
    )


def test_compare_refuses_another_target(tiny_bundle, decoder_bundle):
    result = cli("compare", str(tiny_bundle.bundle_dir), str(decoder_bundle))
    assert result.exit_code == 3 and "different targets or tasks (laptop-avx2, rpi5)" in result.stderr


def test_a_decoders_device_bench_imported_then_checked(decoder_bundle, tmp_path):
    import subprocess
    import sys

    root = tmp_path / decoder_bundle.name
    shutil.copytree(decoder_bundle, root)
    proc = subprocess.run(
        [
            sys.executable,
            str(root),
            "bench",
            "--json",
            "--contexts",
            "16",
            "--new-tokens",
            "4",
            "--runs",
            "1",
            "--warmup",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    (tmp_path / "dev.json").write_text(proc.stdout)
    imported = cli("bench", "--import", str(tmp_path / "dev.json"), str(root))
    assert imported.exit_code == 0, imported.output
    assert "decode" in (root / "README.md").read_text().split("On the device (")[1]
    doc = json.loads(cli("check", str(root), "--json").stdout)
    rows = {r["budget"]: r for r in doc["budgets"]}
    assert rows["decode tokens/s"]["source"].endswith("context 16")
    assert rows["decode tokens/s"]["status"] == "ok"  # a 64-wide model decodes far above 5/s


def test_a_decoders_selftest_re_scores_next_token_agreement(decoder_bundle):
    """Built here; the bundle's own selftest data: its model against the fp32 ONNX argmax."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(decoder_bundle), "selftest", "--json"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    build = json.loads((decoder_bundle / "manifest.json").read_text())["accuracy"]
    assert doc["task"] == "text-generation" and doc["metric"] == "next_token_agreement"
    assert doc["device"]["positions"] == build["model"]["positions"] == doc["build"]["positions"]
    assert doc["device"]["agreement"] == build["model"]["agreement"] and doc["passed"]


def test_host_bench_of_a_decoder_is_bench_2_recorded_and_checked(decoder_bundle, tmp_path):
    root = tmp_path / "out" / decoder_bundle.name
    shutil.copytree(decoder_bundle, root)
    result = cli("bench", str(root), "--runs", "1", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert (doc["schema"], doc["measured_on"]) == ("edgepipe.bench/2", "build host")
    assert [r["context_len"] for r in doc["results"]] == [64] and doc["probe"]["cpu"]
    assert json.loads((root / "manifest.json").read_text())["bench"] == doc
    speed = (root / "README.md").read_text().split("## Speed")[1]
    assert speed.strip().startswith("Measured on the build host, not on the device, with")
    text = cli("bench", str(root), "--runs", "1", "--warmup", "0", "--no-write")
    assert text.exit_code == 0 and "context" in text.stdout and "decode tok/s" in text.stdout
    rows = {r["budget"]: r for r in json.loads(cli("check", str(root), "--json").stdout)["budgets"]}
    assert rows["decode tokens/s"]["source"] == "build host (not the device), context 64"
    assert cli("verify", str(root)).exit_code == 0
