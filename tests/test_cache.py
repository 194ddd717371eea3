"""The stage cache: hits skip stages, corrupt entries are rebuilt, keys follow their inputs."""

import json

import pytest
from click.testing import CliRunner

from edgepipe import catalog
from edgepipe.cache import StageCache, cache_key
from edgepipe.cli import main
from edgepipe.pipeline import BuildSpec, build
from edgepipe.runtime.integrity import sha256_file


@pytest.fixture
def store(tmp_path):
    return StageCache(tmp_path / "cache")


def spec(model, out, store, target="laptop-avx2", profile=None, profiles_dir=None):
    t = catalog.targets().load(target)
    p = catalog.profiles([profiles_dir] if profiles_dir else []).load(profile or t.default_profile)
    return BuildSpec(target=t, profile=p, out=out, model=str(model), bench_runs=2, cache=store)


def test_warm_build_reuses_every_stage_and_gives_the_same_archive(tiny_bert_master, tmp_path, store):
    cold = build(spec(tiny_bert_master, tmp_path / "a", store))
    warm = build(spec(tiny_bert_master, tmp_path / "b", store))
    assert cold.cached == []
    assert warm.cached == [s for s in cold.seconds if s != "bundle"]
    assert {s.split("/")[0] for s in warm.cached} >= {
        "export",
        "reference",
        "quantize",
        "evaluate",
        "bench",
    }
    assert sha256_file(cold.archive) == sha256_file(warm.archive)


def test_changing_only_the_target_reruns_the_stages_after_export(tiny_bert_master, tmp_path, store):
    build(spec(tiny_bert_master, tmp_path / "a", store, target="rpi5"))
    other = build(spec(tiny_bert_master, tmp_path / "b", store, target="jetson-orin"))
    assert other.cached == ["export"]


def test_corrupt_entry_is_detected_and_rebuilt(tiny_bert_master, tmp_path, store):
    build(spec(tiny_bert_master, tmp_path / "a", store))
    (entry,) = (store.root / "quantize").iterdir()
    model = entry / "model.onnx"
    data = bytearray(model.read_bytes())
    data[100] ^= 0xFF
    model.write_bytes(bytes(data))
    again = build(spec(tiny_bert_master, tmp_path / "b", store))
    assert "quantize" not in again.cached and "export" in again.cached
    record = json.loads((entry / "record.json").read_text())
    assert sha256_file(entry / "model.onnx") == record["outputs"]["model.onnx"]  # stored afresh
    assert CliRunner().invoke(main, ["verify", str(again.archive)]).exit_code == 0


def test_half_written_entry_is_never_used(tiny_bert_master, tmp_path, store):
    first = build(spec(tiny_bert_master, tmp_path / "a", store))
    (entry,) = (store.root / "export").iterdir()
    (entry / "record.json").unlink()  # as if killed between the files and the record
    again = build(spec(tiny_bert_master, tmp_path / "b", store))
    assert "export" not in again.cached
    assert sha256_file(first.archive) != "" and (entry / "record.json").is_file()


def test_key_covers_config_inputs_and_versions():
    base = cache_key("quantize", {"a": 1}, {"fp32": "x"}, {"onnxruntime": "1.0"})
    assert len(base) == 64
    assert base != cache_key("quantize", {"a": 2}, {"fp32": "x"}, {"onnxruntime": "1.0"})
    assert base != cache_key("quantize", {"a": 1}, {"fp32": "y"}, {"onnxruntime": "1.0"})
    assert base != cache_key("quantize", {"a": 1}, {"fp32": "x"}, {"onnxruntime": "1.1"})
    assert base != cache_key("export", {"a": 1}, {"fp32": "x"}, {"onnxruntime": "1.0"})


def test_cache_info_and_clear_commands(tiny_bert_master, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPIPE_CACHE_DIR", str(tmp_path / "c"))
    build(spec(tiny_bert_master, tmp_path / "a", StageCache(tmp_path / "c")))
    info = json.loads(CliRunner().invoke(main, ["cache", "info", "--json"]).stdout)
    assert info["entries"] >= 5 and info["path"] == str(tmp_path / "c") and info["bytes"] > 0
    cleared = CliRunner().invoke(main, ["cache", "clear"])
    assert cleared.exit_code == 0 and f"removed {info['entries']} entries" in cleared.output
    assert json.loads(CliRunner().invoke(main, ["cache", "info", "--json"]).stdout)["entries"] == 0


def test_matrix_lists_every_target_for_each_model():
    rows = json.loads(CliRunner().invoke(main, ["matrix"]).stdout)
    assert {r["target"] for r in rows} >= {"rpi5", "laptop-avx2", "laptop-vnni", "jetson-orin"}
    assert all(r["model"] == "default" for r in rows)
    github = json.loads(
        CliRunner().invoke(main, ["matrix", "--format", "github", "-t", "rpi5", "-m", "a", "-m", "b"]).stdout
    )
    assert github == {
        "include": [
            {"target": "rpi5", "profile": "arm64-int8", "model": "a", "arch": "aarch64"},
            {"target": "rpi5", "profile": "arm64-int8", "model": "b", "arch": "aarch64"},
        ]
    }
