"""The bundle a build publishes: contents, manifest, and a reproducible archive."""

import gzip
import tarfile

import pytest

from edgepipe import catalog
from edgepipe.errors import ConfigError
from edgepipe.runtime.integrity import bundle_files, sha256_file
from edgepipe.runtime.tasks import Task
from edgepipe.stages import bundle

EXPECTED = {
    "__main__.py",
    "README.md",
    "requirements.txt",
    "runtime.json",
    "model/model.onnx",
    "tokenizer/tokenizer.json",
    "edgepipe_runtime/cli.py",
    "edgepipe_runtime/embedder.py",
    "edgepipe_runtime/integrity.py",
    "edgepipe_runtime/serve.py",
    "edgepipe_runtime/encoder_bench.py",
    "BENCH.md",
    "bench.svg",
}


def test_manifest_names_every_file_with_its_sha256(tiny_bundle):
    root, manifest = tiny_bundle.bundle_dir, tiny_bundle.manifest
    files = bundle_files(root)
    assert set(files) >= EXPECTED
    assert manifest["files"] == {rel: sha256_file(path) for rel, path in files.items()}
    assert manifest["model"]["path"] == "model/model.onnx"
    assert manifest["model"]["sha256"] == manifest["files"]["model/model.onnx"]
    assert manifest["target"]["name"] == "laptop-avx2" and manifest["profile"]["name"] == "tiny-int8"
    assert {"onnxruntime", "onnx", "optimum", "transformers", "torch"} <= set(manifest["versions"])
    assert set(manifest["stages"]) == {"export", "reference", "quantize", "evaluate", "bench"}
    assert manifest["accuracy"]["fp32_onnx"]["min"] > 0.9999 and manifest["model"]["kept_float"] == []
    assert [a["result"] for a in manifest["attempts"]] == ["ok"]
    assert manifest["bench"]["measured_on"].startswith("build host")


def test_build_bench_is_the_bench_schema_with_a_baseline(tiny_bundle):
    bench = tiny_bundle.manifest["bench"]
    assert bench["schema"] == "edgepipe.bench/1" and bench["measured_on"] == "build host"
    assert bench["target"] == {"name": "laptop-avx2", "arch": "x86_64"}
    (shape,) = bench["results"]
    assert (shape["batch_size"], shape["seq_len"]) == (1, 64)  # 128 capped at the tiny maximum
    assert shape["model"]["runs"] == shape["fp32"]["runs"] == 3
    assert bench["models"]["model"]["sha256"] == tiny_bundle.manifest["model"]["sha256"]
    # Measured in a process of its own: the build's torch (hundreds of MB) is not counted.
    assert 0 < bench["peak_rss_mb"] < 250
    text = (tiny_bundle.bundle_dir / "BENCH.md").read_text()
    assert "measured on the build host" in text and "not on the target device" in text
    assert f"| 1 | 64 | 3 | {shape['model']['p50_ms']} |" in text


def test_requirements_are_only_the_runtime(tiny_bundle):
    lines = [
        line
        for line in (tiny_bundle.bundle_dir / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert [line.split(">")[0].split("=")[0] for line in lines] == [
        "onnxruntime",
        "numpy",
        "tokenizers",
    ]
    versions = tiny_bundle.manifest["versions"]
    assert lines == [
        f"onnxruntime=={versions['onnxruntime']}",
        "numpy>=1.24,<3",
        f"tokenizers=={versions['tokenizers']}",
    ]


@pytest.mark.parametrize(
    ("target", "evaluated", "asked", "expected"),
    [
        ("rpi5", {"onnxruntime": "1.32.0", "tokenizers": "0.22.2"}, None, ("==1.32.0", "==0.22.2")),
        (
            "rpi5",
            {"onnxruntime": "1.32.0", "tokenizers": "0.22.2"},
            "1.27.0",
            ("==1.27.0", "==0.22.2"),
        ),
        # Evaluated outside the target's range: the range stays, the device picks.
        (
            "rpi5",
            {"onnxruntime": "2.1.0", "tokenizers": "not installed"},
            None,
            (">=1.20,<2", ">=0.15,<1"),
        ),
        # The Jetson's onnxruntime-gpu comes from NVIDIA: no PyPI version to pin.
        (
            "jetson-orin",
            {"onnxruntime": "1.32.0", "tokenizers": "0.22.2"},
            None,
            (">=1.20,<2", "==0.22.2"),
        ),
    ],
)
def test_runtime_requirements_pin_what_was_evaluated(target, evaluated, asked, expected):
    specs = bundle.runtime_requirements(catalog.targets().load(target), evaluated, asked)
    assert (specs["onnxruntime"], specs["tokenizers"]) == expected and specs["numpy"] == ">=1.24,<3"
    assert "jinja2" not in specs  # an encoder renders no chat template


def test_a_decoder_bundle_needs_the_jinja2_that_checked_its_template():
    from edgepipe.runtime.tasks import Task

    target = catalog.targets().load("rpi5")
    evaluated = {"onnxruntime": "1.27.0", "tokenizers": "0.22.2", "jinja2": "3.1.6"}
    assert bundle.runtime_requirements(target, evaluated, task=Task.GENERATION)["jinja2"] == "==3.1.6"
    assert bundle.runtime_requirements(target, {}, task=Task.GENERATION)["jinja2"] == ">=3.1,<4"


@pytest.mark.parametrize(("target", "asked"), [("rpi5", "1.19.0"), ("rpi5", "two"), ("jetson-orin", "1.27.0")])
def test_runtime_version_outside_the_target_is_refused(target, asked):
    with pytest.raises(ConfigError, match=f"--runtime-version {asked}: target '{target}' runs"):
        bundle.runtime_requirements(catalog.targets().load(target), {}, asked)


def test_archive_is_reproducible_and_normalised(tiny_bundle, tmp_path, monkeypatch):
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    bundle.write_archive(tiny_bundle.bundle_dir, first)
    (tiny_bundle.bundle_dir / "README.md").touch()  # a new mtime must not change the bytes
    bundle.write_archive(tiny_bundle.bundle_dir, second)
    assert first.read_bytes() == second.read_bytes()
    assert sha256_file(first) == sha256_file(tiny_bundle.archive)
    with gzip.open(first) as gz:
        assert gz.read(1)  # valid gzip
    assert first.read_bytes()[4:8] == b"\0\0\0\0"  # gzip header mtime 0
    with tarfile.open(first) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == tiny_bundle.bundle_dir.name and names[1:] == sorted(names[1:])
    assert {(m.uid, m.gid, m.uname, m.mtime) for m in members} == {(0, 0, "", bundle.DEFAULT_EPOCH)}
    assert {m.mode for m in members if m.isfile()} == {0o644}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    bundle.write_archive(tiny_bundle.bundle_dir, second)
    with tarfile.open(second) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}


def test_runtime_json_names_its_task_and_old_bundles_without_it_still_load(tiny_bundle, tmp_path):
    import json
    import shutil

    from edgepipe.runtime.embedder import RUNTIME_CONFIG, EmbeddingConfig
    from edgepipe.runtime.integrity import bundle_task

    runtime = json.loads((tiny_bundle.bundle_dir / RUNTIME_CONFIG).read_text())
    assert next(iter(runtime)) == "task" and runtime["task"] == "embedding"
    # An embedding bundle built before runtime.json named its task: still an embedding bundle.
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle.bundle_dir, old)
    del runtime["task"]
    (old / RUNTIME_CONFIG).write_text(json.dumps(runtime))
    assert bundle_task(old) == "embedding"
    assert EmbeddingConfig.load(old / RUNTIME_CONFIG) == EmbeddingConfig.load(tiny_bundle.bundle_dir / RUNTIME_CONFIG)


def test_a_decoders_runtime_also_needs_the_grammar_library():
    target = catalog.targets().load("rpi5")
    evaluated = {"onnxruntime": "1.32.0", "tokenizers": "0.22.2"}
    assert "llguidance" not in bundle.runtime_requirements(target, evaluated, task=Task.EMBEDDING)
    assert bundle.runtime_requirements(target, evaluated, task=Task.GENERATION)["llguidance"] == ">=1.6,<2"
