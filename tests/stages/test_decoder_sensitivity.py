"""Decoder sensitivity and 8-bit mixed precision on a tiny random Llama: the ranking covers every
weight MatMul, priced per byte, and a missed bar makes the build bisect over 8-bit MatMuls."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from edgepipe.catalog.config import WeightOnly
from edgepipe.cli import main
from edgepipe.graph import nbits
from edgepipe.stages import generation_sensitivity
from edgepipe.stages.quantize import CalibrationData
from edgepipe.tasks.texts import builtin_calibration_texts
from tests.decoders import export_decoder, make_tiny_decoder

# A bar no int4 copy of a random model meets (KL 1e-9), so the build tries 8-bit MatMuls.
MIXED = """\
name: tiny-int4-mixed
description: GPTQ int4 that keeps MatMuls 8-bit when it misses its bar
method: int4
task_kinds: [generation]
weight_only:
  block_size: 16
  symmetric: false
  algorithm: gptq
  embedding_bits: 8
  keep_8bit: {max_nodes: 3, probe_texts: 2}
accuracy: {metric: next_token_agreement, min: 0.05, max_kl: 0.000000001}
"""


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_decoder("llama", tmp_path_factory.mktemp("sens") / "tiny-llama")


def test_ranking_prices_every_matmul_per_byte(tiny_llama, tmp_path):
    fp32 = export_decoder(tiny_llama, tmp_path / "export")
    calibration = CalibrationData(builtin_calibration_texts("generation")[:4], tiny_llama / "tokenizer.json", 64)
    config = generation_sensitivity.DecoderSensitivityConfig(
        weight_only=WeightOnly(block_size=16, symmetric=False, algorithm="gptq"),
        calibration_digest="test",
        probe_texts=2,
    )
    out = tmp_path / "out"
    out.mkdir()
    record = generation_sensitivity.run(config, fp32, calibration, out)
    ranking = json.loads((out / "ranking.json").read_text())
    graph = onnx.load(str(fp32)).graph
    assert {r["node"] for r in ranking} == {n.name for n in nbits.weight_matmuls(graph)}
    assert record["nodes"] == len(ranking) > 0
    assert all(r["mean_kl"] >= 0 and r["extra_bytes"] > 0 for r in ranking)
    # 4 -> 8 bits in blocks of 16: codes, a float scale and a zero point per block.
    inits = {t.name: t for t in graph.initializer}
    for r in ranking:
        node = next(n for n in nbits.weight_matmuls(graph) if n.name == r["node"])
        k, n = inits[node.input[1]].dims
        assert r["extra_bytes"] == int(k * n * (4 + 4 / 16) / 8)
    per_mb = [r["kl_per_mb"] for r in ranking]
    assert per_mb == sorted(per_mb, reverse=True)
    assert max(r["mean_kl"] for r in ranking) > 0  # 4-bit codes do change the logits


def test_missed_bar_bisects_over_8bit_matmuls(tiny_llama, tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tiny-int4-mixed.yaml").write_text(MIXED)
    work = tmp_path / "work"
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            str(tiny_llama),
            "--target",
            "rpi5",
            "--profile",
            "tiny-int4-mixed",
            "--profiles-dir",
            str(profiles),
            "--out",
            str(tmp_path / "o"),
            "--work-dir",
            str(work),
            "--no-bench",
        ],
    )
    assert result.exit_code == 5, result.output
    assert "no recipe met its bar" in result.stderr
    ranking = json.loads((work / "sensitivity" / "tiny-int4-mixed" / "ranking.json").read_text())
    # k = 2 (the middle of 1..3) missed, then k = 3: each keeps the first k of the ranking 8-bit.
    for k in (2, 3):
        model = onnx.load(str(work / "quantize" / f"tiny-int4-mixed+8bit{k}" / "model.onnx"))
        bits = {
            n.name.rsplit("_Q", 1)[0]: next(a.i for a in n.attribute if a.name == "bits")
            for n in model.graph.node
            if n.op_type == "MatMulNBits" and "/model/layers." in n.name
        }
        assert {name for name, b in bits.items() if b == 8} == {r["node"] for r in ranking[:k]}
        assert sum(1 for b in bits.values() if b == 4) == len(bits) - k
    assert not (tmp_path / "o" / "tiny-llama-rpi5").exists()


def test_extra_size_keeps_the_best_per_byte_from_the_first_attempt(tiny_llama, tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    share = MIXED.replace("probe_texts: 2}", "probe_texts: 2, extra_size: 0.3}").replace(
        "max_kl: 0.000000001", "max_kl: 100.0"
    )
    (profiles / "tiny-int4-mixed.yaml").write_text(share)
    work = tmp_path / "work"
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--model",
            str(tiny_llama),
            "--target",
            "rpi5",
            "--profile",
            "tiny-int4-mixed",
            "--profiles-dir",
            str(profiles),
            "--out",
            str(tmp_path / "o"),
            "--work-dir",
            str(work),
            "--no-bench",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    ranking = json.loads((work / "sensitivity" / "tiny-int4-mixed" / "ranking.json").read_text())
    record = json.loads((tmp_path / "o" / "tiny-llama-rpi5" / "manifest.json").read_text())
    int4_bytes = record["stages"]["sensitivity"]["int4_bytes"]
    expected = generation_sensitivity.within(ranking, int4_bytes, 0.3)[:3]
    assert expected and summary["kept_8bit"] == expected and "kept_float" not in summary
    assert [a["kept_8bit"] for a in summary["attempts"]] == [len(expected)]  # one attempt
    assert record["model"]["kept_8bit"] == expected and "kept_float" not in record["model"]
    chosen = [r for r in ranking if r["node"] in expected]
    assert [r["node"] for r in chosen] == expected  # in ranking order
    assert sum(r["extra_bytes"] for r in chosen) <= 0.3 * int4_bytes
    # Nothing left out would still have fitted beside them.
    left = [r for r in ranking if r["node"] not in expected]
    spent = sum(r["extra_bytes"] for r in chosen)
    assert len(expected) == 3 or all(spent + r["extra_bytes"] > 0.3 * int4_bytes for r in left)


def test_the_manifest_names_a_decoders_kept_matmuls_8bit_and_reads_old_bundles():
    from edgepipe.runtime.integrity import kept_matmuls

    assert kept_matmuls({"task": "text-generation", "model": {"kept_8bit": ["a"]}}) == ("8bit", ["a"])
    # before kept_8bit, a decoder's 8-bit MatMuls were written as kept_float
    assert kept_matmuls({"task": "text-generation", "model": {"kept_float": ["b"]}}) == ("8bit", ["b"])
    assert kept_matmuls({"task": "embedding", "model": {"kept_float": ["c"]}}) == ("float", ["c"])
