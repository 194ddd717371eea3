"""Decoders whose fp32 export is over 2 GB: the build keeps their weights in an external data file
from the export to the quantized model.

The fast tests take the same path on a tiny decoder by lowering the size threshold through its test
hook (``EDGEPIPE_EXTERNAL_DATA_BYTES``, graph/external.py); the slow one builds a random
Qwen2.5-0.5B-shaped model (2.5 GB of fp32 as optimum writes it) end to end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from edgepipe.graph import external
from edgepipe.runtime.generator import Generator
from tests.decoders import make_tiny_decoder


def build(*args: str) -> dict:
    result = CliRunner().invoke(main, ["build", *args, "--no-bench", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def manifest(summary: dict) -> dict:
    return json.loads((Path(summary["bundle_dir"]) / "manifest.json").read_text())


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """A tiny Llama built for laptop-avx2 with its default profile (x86-int4: GPTQ, the
    sensitivity ranking, 8-bit MatMuls), as usual and through external data; and with fp32."""
    root = tmp_path_factory.mktemp("big")
    model = make_tiny_decoder("llama", root / "tiny-llama")
    done: dict[str, tuple[dict, Path]] = {}
    work = root / "work-plain"
    done["plain"] = (
        build("--model", str(model), "--target", "laptop-avx2", "--out", str(root / "plain"), "--work-dir", str(work)),
        work,
    )
    fp32_bytes = external.size(work / "export" / "model.onnx")
    int4_bytes = done["plain"][0]["model_size_bytes"]
    threshold = fp32_bytes // 2  # the export over it, the int4 model under it, as at 1B
    assert int4_bytes < threshold < fp32_bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(external.THRESHOLD_ENV, str(threshold))
        for name, profile in (("external", None), ("external-fp32", "fp32")):
            work = root / f"work-{name}"
            args = [
                "--model",
                str(model),
                "--target",
                "laptop-avx2",
                "--out",
                str(root / name),
                "--work-dir",
                str(work),
                "--no-cache",
            ]
            done[name] = (build(*args, *(["--profile", profile] if profile else [])), work)
    return done


def test_export_over_the_threshold_writes_external_data(builds):
    summary, work = builds["external"]
    export = work / "export"
    assert (export / "model.onnx.data").is_file()
    assert (export / "model.onnx").stat().st_size < (export / "model.onnx.data").stat().st_size
    assert not list(export.glob("*.onnx_data"))  # optimum's own name never reaches the stages
    stages = manifest(summary)["stages"]
    assert stages["export"]["external_data"] == "model.onnx.data"
    assert "model.onnx.data" in stages["export"]["outputs"]
    assert stages["export"]["graph"]["attention_layers_fused"] == 2  # the rewrite ran on it


def test_int4_through_external_data_is_the_same_bundle(builds):
    """Export rewrite, reference, GPTQ's calibration session, the sensitivity ranking, quantize and
    evaluate read the external data: the int4 model and every number come out the same."""
    plain, external_ = manifest(builds["plain"][0]), manifest(builds["external"][0])
    assert external_["model"]["sha256"] == plain["model"]["sha256"]
    assert external_["model"]["size_bytes"] == plain["model"]["size_bytes"]
    assert external_["attempts"] == plain["attempts"]
    assert external_["accuracy"] == plain["accuracy"]
    assert external_["accuracy"]["fp32_onnx"]["agreement"] == 1.0
    assert external_["stages"]["sensitivity"]["worst"] == plain["stages"]["sensitivity"]["worst"]
    for name in ("plain", "external"):  # a decoder's weights are mapped from the data file
        model = Path(builds[name][0]["bundle_dir"]) / "model" / "model.onnx"
        assert (model.parent / "model.onnx.data").is_file()


def test_decoder_bundle_weights_are_in_the_data_file(builds):
    """Every weight of a decoder bundle lies in model.onnx.data (64-byte aligned), which
    onnxruntime maps; the model file holds the graph and small tensors only."""
    import onnx

    bundle = Path(builds["plain"][0]["bundle_dir"])
    model = onnx.load(str(bundle / "model" / "model.onnx"), load_external_data=False)
    outside = [t for t in model.graph.initializer if external.is_external(t)]
    inside = [t for t in model.graph.initializer if not external.is_external(t)]
    assert outside and all(t.ByteSize() < 2 * external.MIN_EXTERNAL for t in inside)
    offsets = [int({e.key: e.value for e in t.external_data}["offset"]) for t in outside]
    assert all(offset % external.ALIGN == 0 for offset in offsets)
    assert {e.value for t in outside for e in t.external_data if e.key == "location"} == {"model.onnx.data"}
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 0, result.output


def test_fp32_bundle_carries_its_data_file_and_runs(builds):
    summary, _ = builds["external-fp32"]
    bundle = Path(summary["bundle_dir"])
    data = bundle / "model" / "model.onnx.data"
    assert data.is_file()
    doc = manifest(summary)
    assert "model/model.onnx.data" in doc["files"]
    assert doc["model"]["size_bytes"] == external.size(bundle / "model" / "model.onnx")
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 0, result.output
    ids = [1, 17, 42, 99, 5, 7]
    got = Generator.from_bundle(bundle).logits(ids)
    plain_work = builds["plain"][1]
    ref = Generator(
        plain_work / "export" / "model.onnx",
        plain_work / "export" / "tokenizer" / "tokenizer.json",
        Generator.from_bundle(bundle).config,
    ).logits(ids)
    np.testing.assert_allclose(got, ref, atol=1e-5)


@pytest.mark.slow
def test_qwen25_05b_shape_builds_end_to_end(tmp_path):
    """The random Qwen2.5-0.5B shape (hidden 896, 24 layers, vocab 151,936, tied): 2.5 GB of fp32
    as optimum writes it. Minutes and ~2.5 GB of disk for the model, twice that for the export."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    import context_sweep

    model = context_sweep.make_model(context_sweep.SHAPES["qwen2.5-0.5b"], tmp_path / "qwen")
    summary = build("--model", str(model), "--target", "laptop-avx2", "--out", str(tmp_path / "d"), "--no-cache")
    doc = manifest(summary)
    export = doc["stages"]["export"]
    assert export["external_data"] == "model.onnx.data"
    assert export["tied"]["size_bytes_before"] > 2**31
    assert export["graph"]["attention_layers_fused"] == 24
    assert doc["accuracy"]["fp32_onnx"]["max_abs_logit_diff"] < 1e-3
    assert summary["model_size_bytes"] < 2**31
    bundle = Path(summary["bundle_dir"])
    assert not (bundle / "model" / "model.onnx.data").exists()
    assert onnx.load(str(bundle / "model" / "model.onnx"), load_external_data=False)
