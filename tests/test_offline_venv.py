"""`edgepipe build --with-wheels`: the bundle installs offline into a new venv and runs there alone."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgepipe.runtime.integrity import sha256_file
from edgepipe.stages.embedding_evaluate import cosine_stats
from edgepipe.tasks.texts import builtin_texts

EDGEPIPE = [sys.executable, "-m", "edgepipe"]


def clean_env(**extra):
    """No PYTHONPATH (it would lend the new venv edgepipe) and no pip settings but our own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **extra}


def build(model, out, profiles_dir, *args):
    proc = subprocess.run(
        [
            *EDGEPIPE,
            "build",
            "--model",
            str(model),
            "--target",
            "laptop-avx2",
            "--profile",
            "tiny-int8",
            "--profiles-dir",
            str(profiles_dir),
            "--out",
            str(out),
            "--bench-runs",
            "3",
            "--with-wheels",
            "--json",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def built(tiny_bert_master, profiles_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheels")
    summary = build(tiny_bert_master, tmp / "dist", profiles_dir, "--work-dir", str(tmp / "work"))
    return summary, tmp


@pytest.fixture(scope="module")
def venv(built, tmp_path_factory):
    """A new venv holding only what `pip install --no-index --find-links wheels` put there."""
    summary, _ = built
    bundle = Path(summary["bundle_dir"])
    root = tmp_path_factory.mktemp("venv") / "device"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, env=clean_env())
    python = root / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-index", "--find-links", "wheels", "-r", "requirements.txt"],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return python


def test_wheels_are_in_the_bundle_and_the_manifest(built):
    summary, _ = built
    bundle = Path(summary["bundle_dir"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    names = sorted(p.name for p in (bundle / "wheels").iterdir())
    assert names == manifest["wheels"]["files"]
    assert {n.split("-")[0] for n in names} >= {"onnxruntime", "numpy", "tokenizers"}
    assert not {n.split("-")[0] for n in names} & {"torch", "transformers", "optimum", "edgepipe"}
    for name in names:
        assert manifest["files"][f"wheels/{name}"] == sha256_file(bundle / "wheels" / name)
    assert manifest["wheels"]["platforms"][0] == "manylinux_2_28_x86_64"
    assert "manylinux2014_x86_64" in manifest["wheels"]["platforms"]
    ort = next(n for n in names if n.startswith("onnxruntime-"))
    requirements = (bundle / "requirements.txt").read_text()
    assert f"onnxruntime=={ort.split('-')[1]}" in requirements.splitlines()
    assert manifest["requirements"]["onnxruntime"] == f"=={manifest['versions']['onnxruntime']}"


def test_bundle_runs_in_a_venv_of_its_requirements_alone(built, venv):
    summary, tmp = built
    bundle = Path(summary["bundle_dir"])
    probe = subprocess.run(
        [
            str(venv),
            "-c",
            "import importlib.util as u; print([m for m in ('torch', 'transformers',"
            " 'optimum', 'edgepipe', 'onnx') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        env=clean_env(),
        cwd=tmp,  # not the checkout, whose edgepipe/ a bare `python -c` would find
    )
    assert probe.stdout.strip() == "[]", probe.stderr
    torch = subprocess.run([str(venv), "-c", "import torch"], capture_output=True, env=clean_env(), cwd=tmp)
    assert torch.returncode == 1 and b"No module named 'torch'" in torch.stderr

    texts = builtin_texts("embedding")
    run = subprocess.run(
        [str(venv), str(bundle), "embed", *texts],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        cwd=tmp,
    )
    assert run.returncode == 0, run.stderr
    vectors = np.array([json.loads(line)["embedding"] for line in run.stdout.splitlines()])
    # The build's evaluation: the PyTorch reference it scored against, and the scores it recorded.
    reference = np.load(tmp / "work" / "reference" / "reference.npy")
    scored = cosine_stats(vectors, reference, texts)
    recorded = json.loads((bundle / "manifest.json").read_text())["accuracy"]["model"]
    for key in ("min", "p5", "mean"):
        assert scored[key] == pytest.approx(recorded[key], abs=2e-6), key
    # Text by text: each cosine the venv gives is the one the build's evaluation measured. The name
    # of the worst text alone is no such check: two texts whose cosines lie within a rounding of
    # each other (the old tiny model, int8 all but lossless, had dozens) swap places from run to
    # run as the float sums of another thread count round otherwise. So the recorded worst text
    # need only be the worst to within the same tolerance.
    evaluated = np.load(tmp / "work" / "evaluate" / "tiny-int8" / "embeddings.npy")
    here, there = per_text_cosines(vectors, reference), per_text_cosines(evaluated, reference)
    np.testing.assert_allclose(here, there, rtol=0, atol=2e-6)
    worst = next(i for i, t in enumerate(texts) if t[:80] == recorded["worst_text"])
    assert here[worst] == pytest.approx(here.min(), abs=2e-6)
    verify = subprocess.run([str(venv), str(bundle), "verify"], capture_output=True, text=True, env=clean_env())
    assert verify.returncode == 0 and verify.stdout.startswith("ok: "), verify.stderr


def per_text_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def without_timings(manifest):
    """The manifest less what the bench stage measured, the one part that differs run to run."""
    stages = {k: v for k, v in manifest["stages"].items() if k != "bench"}
    rest = {k: v for k, v in manifest.items() if k not in ("bench", "stages", "files", "attempts")}
    # They print the measured numbers (the SBOM's modelCard its measured speed: sbom_without_timings).
    timed_files = ("README.md", "BENCH.md", "bench.svg", "sbom.cdx.json")
    files = {k: v for k, v in manifest["files"].items() if k not in timed_files}
    timed = ("p50_ms", "speedup_vs_fp32")
    attempts = [{k: v for k, v in row.items() if k not in timed} for row in manifest["attempts"]]
    return {**rest, "stages": stages, "files": files, "attempts": attempts}


def sbom_without_timings(bundle_dir: Path) -> dict:
    """The SBOM less the speeds its modelCard reports as measured (and the serial number, a digest of
    the whole document): everything else in it must be byte-stable from scratch."""
    doc = json.loads((bundle_dir / "sbom.cdx.json").read_text())
    doc.pop("serialNumber", None)
    for component in doc.get("components", []):
        metrics = component.get("modelCard", {}).get("quantitativeAnalysis", {}).get("performanceMetrics")
        if metrics is not None:
            metrics[:] = [m for m in metrics if "measured on" not in m["type"]]
    return doc


def test_rebuilds_give_the_same_archive_and_only_timings_differ_from_scratch(
    built, tiny_bert_master, profiles_dir, tmp_path
):
    summary, _ = built
    warm = build(tiny_bert_master, tmp_path / "warm", profiles_dir)
    assert warm["cached_stages"] == [
        "wheels",
        "export",
        "reference",
        "quantize/tiny-int8",
        "evaluate/tiny-int8",
        "bench/tiny-int8",
    ]
    assert sha256_file(Path(warm["archive"])) == sha256_file(Path(summary["archive"]))
    # From scratch, export, quantization, evaluation and the wheels are byte-stable; the bench
    # stage measures afresh, so its numbers (in manifest.json and README.md) are all that changes.
    cold = build(tiny_bert_master, tmp_path / "cold", profiles_dir, "--no-cache")
    assert cold["cached_stages"] == []
    first, second = (json.loads((Path(s["bundle_dir"]) / "manifest.json").read_text()) for s in (summary, cold))
    assert without_timings(first) == without_timings(second)
    assert sbom_without_timings(Path(summary["bundle_dir"])) == sbom_without_timings(Path(cold["bundle_dir"]))


def test_download_failure_is_one_line_and_publishes_nothing(tiny_bert_master, tmp_path):
    target = (Path(__file__).parent.parent / "targets" / "laptop-avx2.yaml").read_text()
    odd = tmp_path / "targets" / "odd.yaml"
    odd.parent.mkdir()
    odd.write_text(target.replace("name: laptop-avx2", "name: odd").replace("manylinux_2_28_x86_64", "linux_nowhere"))
    proc = subprocess.run(
        [
            *EDGEPIPE,
            "build",
            "--model",
            str(tiny_bert_master),
            "--target",
            "odd",
            "--targets-dir",
            str(odd.parent),
            "--out",
            str(tmp_path / "out"),
            "--with-wheels",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 7, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pip could not download the wheels for linux_nowhere" in errors[0]
    assert "Traceback" not in proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")] == []
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize(
    ("target", "args", "message"),
    [
        ("rpi5", ["--runtime-version", "0.9.0"], "target 'rpi5' runs onnxruntime>=1.20,<2"),
        ("jetson-orin", ["--with-wheels"], "NVIDIA's onnxruntime-gpu, which is not on PyPI"),
    ],
)
def test_runtime_options_that_cannot_fit_are_refused(tiny_bert_master, tmp_path, target, args, message):
    proc = subprocess.run(
        [
            *EDGEPIPE,
            "build",
            "--model",
            str(tiny_bert_master),
            "--target",
            target,
            "--out",
            str(tmp_path / "out"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3 and message in proc.stderr, proc.stderr
