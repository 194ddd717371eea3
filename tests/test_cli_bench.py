"""`edgepipe bench BUNDLE` and `python <bundle> bench`: one schema, recorded in the bundle safely.

Timings are never asserted; the schema, the arithmetic and what is written are.
"""

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from unittest.mock import ANY

import pytest
from click.testing import CliRunner

from edgepipe.bench.host import find_baseline
from edgepipe.cache import StageCache
from edgepipe.cli import main
from edgepipe.runtime.integrity import sha256_file, verify_dir

FAST = ["--runs", "3", "--warmup", "0"]
STATS = {"runs", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "stdev_ms", "items_per_s"}


def keys(value, prefix=""):
    """Every key path in a JSON document; lists by their first item, None as a leaf."""
    if isinstance(value, dict):
        return {p for k, v in value.items() for p in {prefix + k} | keys(v, prefix + k + ".")}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return keys(value[0], prefix + "[].")
    return set()


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle and its archive, safe to rewrite."""
    out = tmp_path / "dist"
    out.mkdir()
    shutil.copy(tiny_bundle.archive, out / tiny_bundle.archive.name)
    return shutil.copytree(tiny_bundle.bundle_dir, out / tiny_bundle.bundle_dir.name)


def bench(*args):
    return CliRunner().invoke(main, ["bench", *args])


def test_json_schema_statistics_and_baseline(bundle):
    result = bench(str(bundle), "--json", "--batch-sizes", "1,2", "--seq-lens", "8,16", *FAST)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["schema"] == "edgepipe.bench/1" and doc["measured_on"] == "build host"
    assert {"cpu", "machine", "cores", "isa"} <= set(doc["machine"])
    assert doc["target"] == {"name": "laptop-avx2", "arch": "x86_64"}
    assert doc["target_threads"] == 4 and doc["threads"] == min(4, doc["machine"]["cores"])
    assert doc["provider"] == "CPUExecutionProvider" and doc["complete"] is True
    assert [(r["batch_size"], r["seq_len"]) for r in doc["results"]] == [(1, 8), (1, 16), (2, 8), (2, 16)]
    export = json.loads((bundle / "manifest.json").read_text())["stages"]["export"]
    # The fp32 baseline is the export the bundle was built from, found in the stage cache.
    assert doc["models"]["fp32"]["sha256"] == export["outputs"]["model.onnx"]
    for r in doc["results"]:
        assert set(r["model"]) == set(r["fp32"]) == STATS and r["model"]["runs"] == 3
        assert r["speedup_vs_fp32"] == round(r["fp32"]["p50_ms"] / r["model"]["p50_ms"], 3)
        # items/s = batch / mean latency, within the rounding of mean_ms to 3 decimals
        assert r["batch_size"] * 1000 / r["model"]["items_per_s"] == pytest.approx(r["model"]["mean_ms"], abs=6e-4)
    for m in doc["models"].values():
        assert m["size_bytes"] > 0 and m["load_ms"] > 0 and m["first_inference_ms"] > 0
    assert doc["peak_rss_mb"] > 0


def test_results_are_recorded_and_the_bundle_still_verifies(bundle, tiny_bundle):
    result = bench(str(bundle), "--json", *FAST)
    assert result.exit_code == 0, result.output
    assert f"recorded in {bundle}: README.md, BENCH.md, bench.svg, manifest.json, {bundle.name}.tar.gz" in result.output
    doc = json.loads(result.stdout)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["bench"] == doc
    assert manifest["stages"] == tiny_bundle.manifest["stages"]  # the build's own record stays
    assert verify_dir(bundle) == []
    assert sha256_file(bundle / "model" / "model.onnx") == manifest["model"]["sha256"]
    text = (bundle / "BENCH.md").read_text()
    assert f"| 1 | 64 | 3 | {doc['results'][0]['model']['p50_ms']} |" in text
    assert ET.fromstring((bundle / "bench.svg").read_text()).tag.endswith("svg")
    assert f"p50 {doc['results'][0]['model']['p50_ms']} ms" in (bundle / "README.md").read_text()
    archive = bundle.parent / f"{bundle.name}.tar.gz"
    assert CliRunner().invoke(main, ["verify", str(archive)]).exit_code == 0
    assert sha256_file(archive) != sha256_file(tiny_bundle.archive)  # rewritten, with the results
    assert sorted(p.name for p in bundle.parent.iterdir() if not p.name.endswith(".lock")) == [
        bundle.name,
        archive.name,
    ]


def run_bundle_bench(bundle, *args):
    proc = subprocess.run(
        [sys.executable, str(bundle), "bench", "--json", "--seq-lens", "8", *FAST, *args],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("baseline", [True, False])
def test_bundle_bench_prints_the_same_schema(bundle, baseline, tiny_bundle, private_cache):
    host = bench(
        str(bundle), "--json", "--no-write", "--seq-lens", "8", *FAST, "--baseline" if baseline else "--no-baseline"
    )
    assert host.exit_code == 0, host.output
    host_doc = json.loads(host.stdout)
    fp32 = host_doc["models"]["fp32"]
    cached = find_baseline(tiny_bundle.manifest, StageCache(private_cache))
    device = run_bundle_bench(bundle, *(["--baseline-model", str(cached)] if baseline else []))
    assert keys(device) == keys(host_doc)
    assert device["measured_on"] == "bundle runtime" and device["machine_matches_target_arch"]
    # Timed in alternation with a baseline, neither session spins; alone, onnxruntime's default.
    assert host_doc["thread_spinning"] is device["thread_spinning"] is (not baseline)
    if baseline:
        assert fp32["path"] == "export/model.onnx (stage cache)"
        assert device["models"]["fp32"] == {**fp32, "path": str(cached), "load_ms": ANY, "first_inference_ms": ANY}
    else:
        assert device["models"]["fp32"] is None and device["results"][0]["speedup_vs_fp32"] is None
    assert verify_dir(bundle) == []  # the bundle's bench only prints


def test_no_baseline_in_the_cache_says_so_and_measures_alone(bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPIPE_CACHE_DIR", str(tmp_path / "empty-cache"))
    result = bench(str(bundle), "--json", "--no-write", *FAST)
    assert result.exit_code == 0, result.output
    assert "no fp32 baseline: the export this bundle was built from is not in the stage cache" in (result.output)
    assert json.loads(result.stdout)["models"]["fp32"] is None


def test_time_limit_says_how_many_runs_were_done(bundle):
    before = sha256_file(bundle / "manifest.json")
    result = bench(str(bundle), "--json", "--runs", "100000", "--max-seconds", "0.2", "--no-write")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    runs = doc["results"][0]["model"]["runs"]
    assert doc["complete"] is False and 1 <= runs < 100000
    assert (
        f"could not meet --runs 100000 within --max-seconds 0.2 (timed runs done: "
        f"batch 1 x 64: {runs})" in result.output
    )
    assert sha256_file(bundle / "manifest.json") == before  # --no-write


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--seq-lens", "100"], 3, "sequence length 100 is over the model's maximum of 64 tokens"),
        (["--batch-sizes", "1,x"], 2, "--batch-sizes must be comma-separated integers"),
        (["--baseline-model", "__file__"], 4, "onnxruntime cannot load this model"),
    ],
)
def test_bad_options_are_one_line(bundle, args, code, message):
    before = sha256_file(bundle / "manifest.json")
    args = [__file__ if a == "__file__" else a for a in args]
    result = bench(str(bundle), *args, *FAST)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output
    assert sha256_file(bundle / "manifest.json") == before


def test_a_changed_bundle_is_refused_not_rehashed(bundle):
    (bundle / "runtime.json").write_text((bundle / "runtime.json").read_text() + " ")
    before = sha256_file(bundle / "manifest.json")
    result = bench(str(bundle), *FAST)
    assert result.exit_code == 6
    assert "does not match its manifest (sha256 mismatch: runtime.json)" in result.output
    assert sha256_file(bundle / "manifest.json") == before
    assert not [p for p in bundle.parent.iterdir() if ".tmp" in p.name]
