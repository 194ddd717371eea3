"""Real-weight heads on all-MiniLM-L6-v2 (benchmarks/real_heads.py: a 5-intent classifier and a
distilled cross-encoder reranker, trained in code) built with rpi5's default int8 profile and scored
on held-out commands: the sound recipe meets the int8 bars, a broken one (per-tensor s8 weights, no
rescale, nothing kept float) misses them.

Slow (a minute to train both once into REAL_HEADS_DIR, then a minute or two per build); run only
with `-m slow` (`make test-slow`).
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
from real_heads import (  # noqa: E402
    CLASSIFIER,
    DEFAULT_DIR,
    RERANKER,
    _profiles,
    build,
    eval_files,
)


@pytest.fixture(scope="module")
def heads(tmp_path_factory) -> dict[str, Path]:
    return build(Path(os.environ.get("REAL_HEADS_DIR") or DEFAULT_DIR).expanduser())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("real-heads")
    _profiles(root / "profiles")
    eval_files(root)
    return root


def _build(model: Path, work: Path, data: Path, *extra: str) -> tuple[int, dict, str]:
    cmd = [
        sys.executable,
        "-m",
        "edgepipe",
        "build",
        "--model",
        str(model),
        "--target",
        "rpi5",
        "--out",
        str(work / "dist"),
        "--no-bench",
        "--json",
        "--eval-data",
        str(data),
        *extra,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = done.stdout.strip().splitlines()
    return done.returncode, json.loads(lines[-1]) if lines else {}, done.stderr


@pytest.mark.parametrize("name", [CLASSIFIER, RERANKER])
def test_real_head_meets_the_int8_bar(heads, work, name):
    data = work / ("heldout_texts.txt" if name == CLASSIFIER else "heldout_pairs.jsonl")
    code, summary, stderr = _build(heads[name], work, data)
    assert code == 0, stderr[-3000:]
    assert summary["profile"] == "arm64-int8"
    got = summary["accuracy"]
    assert not summary["kept_float"]  # the first attempt meets the bar, nothing kept float
    bar = catalog.profiles().load("arm64-int8").bar("classification" if name == CLASSIFIER else "reranking")
    if name == CLASSIFIER:
        assert got["agreement"] >= bar.min and got["mean_kl"] <= bar.max_kl / 2
    else:
        assert got["min_spearman"] >= bar.min and got["max_score_error"] <= bar.max_score_error


@pytest.mark.parametrize("name", [CLASSIFIER, RERANKER])
def test_broken_int8_misses_the_bar(heads, work, name):
    """broken-int8 with arm64-int8's real bars: exit 5 and the bar named."""
    profiles = work / "profiles"
    broken = (profiles / "broken-int8.yaml").read_text()
    real = (ROOT / "profiles" / "arm64-int8.yaml").read_text()
    import yaml

    profile = yaml.safe_load(broken)
    profile["task_accuracy"] = yaml.safe_load(real)["task_accuracy"]
    profile["name"] = "broken-int8-real-bars"
    (profiles / "broken-int8-real-bars.yaml").write_text(yaml.safe_dump(profile))
    data = work / ("heldout_texts.txt" if name == CLASSIFIER else "heldout_pairs.jsonl")
    code, _, stderr = _build(
        heads[name],
        work,
        data,
        "-p",
        "broken-int8-real-bars",
        "--profiles-dir",
        str(profiles),
    )
    assert code == 5, stderr[-3000:]
