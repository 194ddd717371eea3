"""The real SmolLM2-135M-Instruct (`make real-llm`) built with each CPU target's default profile.

Slow (minutes per build) and run only with `-m slow` (`make test-slow`); skipped without the models.
The off-grid variant is built: the as-shipped weights sit on Q4_1's grid and flatter 4-bit formats.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgepipe import catalog

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from real_llm import DEFAULT_DIR, GGUF_MEMBER, INSTRUCT, OFFGRID  # noqa: E402

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def real_llm() -> Path:
    base = Path(os.environ.get("REAL_LLM_DIR") or DEFAULT_DIR).expanduser()
    if not (base / OFFGRID / "model.safetensors").is_file():
        pytest.skip(f"no real-llm models in {base}: run `make real-llm` (or set REAL_LLM_DIR)")
    return base


def build(model: Path, target: str, out: Path, *extra: str) -> tuple[dict, str]:
    """`edgepipe build` in its own process; its JSON summary and its stderr."""
    cmd = [
        sys.executable,
        "-m",
        "edgepipe",
        "build",
        "--model",
        str(model),
        "--target",
        target,
        "--out",
        str(out),
        "--no-bench",
        "--json",
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def chat_answer(bundle: Path) -> str:
    done = subprocess.run(
        [sys.executable, str(bundle), "generate", QUESTION, "--chat", "--json", "--max-new-tokens", "24"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["text"])


@pytest.fixture(scope="module")
def fp32_bundle(real_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real-fp32")
    summary, _ = build(real_llm / OFFGRID, "laptop-avx2", out, "--profile", "fp32")
    return Path(summary["bundle_dir"])


@pytest.fixture(scope="module")
def fp32_answer(fp32_bundle: Path) -> str:
    return chat_answer(fp32_bundle)


def generate_json(bundle: Path, prompt: str, *extra: str) -> dict:
    cmd = [sys.executable, str(bundle), "generate", prompt, "--chat", "--json", "--max-new-tokens", "64", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_speculation_on_a_grounded_prompt_keeps_the_greedy_tokens(fp32_bundle):
    paragraph = (ROOT / "benchmarks" / "data" / "heldout_paragraphs.txt").read_text().splitlines()[4]
    prompt = f"{paragraph}\n\nList the facts this text states, one per line."
    on, off = generate_json(fp32_bundle, prompt), generate_json(fp32_bundle, prompt, "--no-speculate")
    assert on["token_ids"] == off["token_ids"] and on["timings"]["speculative"]  # float32: on by default
    assert on["timings"]["accepted_tokens"] >= 16  # the answer copies the paragraph's wording


@pytest.mark.parametrize("target", ["rpi5", "laptop-avx2"])
def test_default_profile_holds_without_fallback(real_llm, fp32_answer, target, tmp_path):
    default = catalog.targets().load(target).profile_for("generation")
    summary, _ = build(real_llm / OFFGRID, target, tmp_path)
    assert summary["profile"] == default, summary["attempts"]
    assert "Paris" in fp32_answer
    answer = chat_answer(Path(summary["bundle_dir"]))
    assert "Paris" in answer, f"{target} {default}: {answer!r}; fp32: {fp32_answer!r}"


def test_the_real_gguf_builds_for_rpi5(real_llm, tmp_path):
    gguf = real_llm / Path(GGUF_MEMBER).name
    summary, stderr = build(gguf, "rpi5", tmp_path)
    assert "is stored as Q4_1; quantizing it again compounds the error" in stderr
    manifest = json.loads((Path(summary["bundle_dir"]) / "manifest.json").read_text())
    source = manifest["model"]["source"]
    assert source["format"] == "gguf" and source["quantization"] == "Q4_1"
    assert source["digest"].endswith("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")
    assert (real_llm / INSTRUCT).is_dir()  # what `make real-llm` converted from the same file
    assert "Paris" in chat_answer(Path(summary["bundle_dir"]))
