"""Text classification and cross-encoder reranking: tiny models built here, built into bundles by
`edgepipe build`, run by the bundle's CLI and `serve`, held to transformers' numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgepipe import sources
from edgepipe.cli import main
from edgepipe.errors import ConfigError, ModelError
from edgepipe.tasks.texts import builtin_pairs, load_pairs
from tests.runtime.serving import Server, request
from tests.scoring_models import (
    INTENTS,
    make_tiny_classifier,
    make_tiny_reranker,
    make_tiny_xlmr_reranker,
)

TEXTS = ["turn on the kitchen lights", "play some jazz in the living room", "ok", "word " * 200]
QUERY = "kitchen lights"
DOCS = ["turn on the kitchen lights", "play some jazz", "what's the weather like tomorrow?"]


def _build(model: Path, out: Path, *args: str) -> dict:
    result = CliRunner().invoke(main, ["build", "--model", str(model), "--out", str(out), "--json", *args])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    summary["manifest"] = json.loads((Path(summary["bundle_dir"]) / "manifest.json").read_text())
    return summary


def run_bundle(bundle: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle), *args], input=stdin, capture_output=True, timeout=120)


def _torch_logits(model_dir: Path, items: list) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    rows = []
    with torch.inference_mode():
        for item in items:
            args = item if isinstance(item, tuple) else (item,)
            enc = tokenizer(*args, truncation=True, max_length=64, return_tensors="pt")
            rows.append(model(**enc).logits[0].numpy())
    return np.stack(rows)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scoring")
    return {
        "classifier": make_tiny_classifier(root / "tiny-intents"),
        "reranker": make_tiny_reranker(root / "tiny-reranker"),
    }


@pytest.fixture(scope="module")
def classifier_fp32(models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist")
    return _build(models["classifier"], out, "-t", "laptop-avx2", "-p", "fp32", "--no-bench")


@pytest.fixture(scope="module")
def reranker_fp32(models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("dist")
    return _build(models["reranker"], out, "-t", "laptop-avx2", "-p", "fp32", "--no-bench")


# ---- the task comes from config.json, --task overrides it --------------------------------------


def test_task_comes_from_the_head(models, tiny_bert_master):
    assert sources.resolve(str(models["classifier"])).task == "text-classification"
    assert sources.resolve(str(models["reranker"])).task == "reranking"
    assert sources.resolve(str(tiny_bert_master)).task == "embedding"  # BertModel: no head
    # The encoder under a head embeds too, when asked.
    assert sources.resolve(str(models["classifier"]), task="embedding").task == "embedding"


@pytest.mark.parametrize(
    ("which", "task", "message"),
    [
        ("classifier", "reranking", "the head has 3 outputs, which makes it a text-classification"),
        ("reranker", "text-classification", "the head has 1 output, which makes it a reranking"),
        ("classifier", "text-generation", "bert models are not built for text-generation"),
        ("plain", "text-classification", "text-classification needs a sequence-classification"),
    ],
)
def test_a_task_the_model_cannot_do_is_one_line_exit_4(models, tiny_bert_master, tmp_path, which, task, message):
    model = tiny_bert_master if which == "plain" else models[which]
    result = CliRunner().invoke(
        main, ["build", "--model", str(model), "-t", "rpi5", "--task", task, "-o", str(tmp_path)]
    )
    assert result.exit_code == 4, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


# ---- classification ----------------------------------------------------------------------------


def test_fp32_classifier_gives_transformers_labels_and_scores(classifier_fp32, models):
    bundle = Path(classifier_fp32["bundle_dir"])
    manifest = classifier_fp32["manifest"]
    assert manifest["task"] == "text-classification"
    assert manifest["accuracy"]["model"]["agreement"] == 1.0
    proc = run_bundle(bundle, "classify", *TEXTS)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    logits = _torch_logits(models["classifier"], TEXTS)
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    for record, want in zip(records, probs, strict=True):
        assert set(record["scores"]) == set(INTENTS)
        assert record["label"] == INTENTS[int(np.argmax(want))]
        got = np.array([record["scores"][label] for label in INTENTS])
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert record["score"] == pytest.approx(want.max(), abs=1e-4)
    assert records[-1]["truncated"] is True and "truncated" not in records[0]


def test_default_int8_classifier_passes_its_guard(models, tmp_path):
    summary = _build(models["classifier"], tmp_path, "-t", "laptop-avx2", "--no-bench")
    accuracy = summary["manifest"]["accuracy"]
    assert summary["profile"] == "x86-avx2-int8" and accuracy["passed"] is True
    assert accuracy["metric"] == "label_agreement" and accuracy["bar"] == 0.95
    assert accuracy["model"]["agreement"] >= 0.95 and accuracy["model"]["mean_kl"] <= 0.001
    proc = run_bundle(Path(summary["bundle_dir"]), "selftest", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["device"]["agreement"] >= 0.95


def test_classifier_bundle_refuses_other_commands(classifier_fp32):
    proc = run_bundle(Path(classifier_fp32["bundle_dir"]), "embed", "hello")
    assert proc.returncode == 2
    assert b"a text-classification bundle: it does `classify`, not `embed`" in proc.stderr


def test_classify_and_rerank_over_http(classifier_fp32, reranker_fp32):
    server = Server(Path(classifier_fp32["bundle_dir"]))
    try:
        body = json.dumps({"texts": TEXTS[:2]}).encode()
        status, _, answer = request(server.port, "POST", "/classify", body)
        assert status == 200 and len(answer["results"]) == 2
        assert answer["results"][0]["label"] in INTENTS
        status, _, answer = request(server.port, "POST", "/rerank", body)
        assert status == 404 and "POST /classify, not /rerank" in answer["error"]
        status, _, health = request(server.port, "GET", "/health")
        assert health["task"] == "text-classification" and health["max_length"] == 64
    finally:
        server.stop()
    server = Server(Path(reranker_fp32["bundle_dir"]))
    try:
        body = json.dumps({"query": QUERY, "documents": DOCS}).encode()
        status, _, answer = request(server.port, "POST", "/rerank", body)
        assert status == 200
        scores = [r["score"] for r in answer["results"]]
        assert sorted(r["index"] for r in answer["results"]) == [0, 1, 2]
        assert scores == sorted(scores, reverse=True)
        status, _, answer = request(server.port, "POST", "/rerank", b'{"query": "q"}')
        assert status == 400 and '"documents"' in answer["error"]
    finally:
        server.stop()


# ---- reranking ---------------------------------------------------------------------------------


def test_fp32_reranker_gives_transformers_scores_in_order(reranker_fp32, models):
    bundle = Path(reranker_fp32["bundle_dir"])
    accuracy = reranker_fp32["manifest"]["accuracy"]
    assert reranker_fp32["manifest"]["task"] == "reranking"
    assert accuracy["model"]["queries"] == 14 and accuracy["model"]["n"] == 112
    proc = run_bundle(bundle, "rerank", QUERY, *DOCS)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    want = _torch_logits(models["reranker"], [(QUERY, d) for d in DOCS])[:, 0]
    assert [r["index"] for r in records] == list(np.argsort(-want, kind="stable"))
    for record in records:
        assert record["document"] == DOCS[record["index"]]
        assert record["score"] == pytest.approx(float(want[record["index"]]), abs=1e-4)


def test_default_int8_reranker_passes_its_guard_and_benches(models, tmp_path):
    summary = _build(models["reranker"], tmp_path, "-t", "rpi5", "--bench-runs", "3")
    accuracy = summary["manifest"]["accuracy"]
    assert summary["profile"] == "arm64-int8" and accuracy["passed"] is True
    assert accuracy["metric"] == "rank_correlation" and accuracy["max_score_error"] == 0.7
    assert accuracy["model"]["min_spearman"] >= 0.85
    assert summary["manifest"]["bench"]["task"] == "reranking"
    bundle = Path(summary["bundle_dir"])
    proc = run_bundle(bundle, "bench", "--runs", "2", "--warmup", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["task"] == "reranking"
    proc = run_bundle(bundle, "selftest")
    assert proc.returncode == 0 and b"passes" in proc.stdout, proc.stdout + proc.stderr


EXACT_RANK = """\
name: exact-rank
description: int8 MatMuls, the worst MatMuls float until every query's order is fp32's
method: dynamic-int8
task_kinds: [reranking]
quantization: {op_types: [MatMul], per_channel: true, keep_float: {max_nodes: 12}}
accuracy: {metric: rank_correlation, min: 1.0}
"""


def test_xlm_roberta_reranker_matches_transformers_and_keeps_floats(tmp_path):
    """bge-reranker-base's family: no token_type_ids, positions past the padding id. Held to an
    exact order, int8 misses and the build keeps the MatMuls the sensitivity stage ranks worst
    float (the classification head is float in every attempt) until the order is fp32's."""
    model = make_tiny_xlmr_reranker(tmp_path / "tiny-xlmr-reranker")
    summary = _build(model, tmp_path / "dist", "-t", "laptop-avx2", "-p", "fp32", "--no-bench")
    assert summary["manifest"]["accuracy"]["passed"] is True
    proc = run_bundle(Path(summary["bundle_dir"]), "rerank", QUERY, *DOCS)
    assert proc.returncode == 0, proc.stderr
    got = {r["index"]: r["score"] for r in map(json.loads, proc.stdout.decode().splitlines())}
    want = _torch_logits(model, [(QUERY, d) for d in DOCS])[:, 0]
    np.testing.assert_allclose([got[i] for i in range(len(DOCS))], want, atol=1e-4)

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "exact-rank.yaml").write_text(EXACT_RANK)
    summary = _build(
        model,
        tmp_path / "dist",
        "-t",
        "laptop-avx2",
        "-p",
        "exact-rank",
        "--no-bench",
        "--profiles-dir",
        str(tmp_path / "profiles"),
    )
    first, kept = summary["attempts"][0], summary["kept_float"]
    assert first["kept_float"] == 0 and first["result"].startswith("worst-query Spearman")
    assert summary["accuracy"]["min_spearman"] == 1.0 and 1 <= len(kept) <= 12
    ranking = summary["manifest"]["stages"]["sensitivity"]
    assert ranking["nodes"] == 12 and ranking["worst"][0]["node"] == kept[0]


# ---- evaluation pairs --------------------------------------------------------------------------


def test_builtin_pairs_rank_each_query_against_its_group():
    pairs, queries = builtin_pairs()
    assert len(pairs) == 112 and len(set(queries)) == 14
    first = [d for (q, d), n in zip(pairs, queries, strict=True) if n == 0]
    assert pairs[0][0] in first and len(first) == 8  # the query is among its documents


def test_eval_pairs_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [("lights", "turn on the lights"), ("lights", "play jazz"), ("jazz", "play jazz"), ("jazz", "weather")]
    path.write_text("\n".join(json.dumps({"query": q, "document": d}) for q, d in rows))
    assert load_pairs(path) == (rows, [0, 0, 1, 1])
    path.write_text('{"query": "lights", "document": "a"}\n{"query": "lights"}\n')
    with pytest.raises(ConfigError, match='line 2 is not a JSON object with "query" and'):
        load_pairs(path)
    path.write_text('{"query": "lights", "document": "a"}\n')
    with pytest.raises(ConfigError, match="has one document"):
        load_pairs(path)


def test_multi_label_heads_are_refused(models, tmp_path):
    config = json.loads((models["classifier"] / "config.json").read_text())
    model = tmp_path / "multi"
    model.mkdir()
    for f in models["classifier"].iterdir():
        (model / f.name).write_bytes(f.read_bytes())
    config["problem_type"] = "multi_label_classification"
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="multi-label classification"):
        sources.resolve(str(model))


def test_spearman_counts_ties_and_no_spread():
    from edgepipe.runtime.scorer import spearman

    a = np.array([0.1, 0.5, 0.3, 0.9])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(0.9486833)  # scipy's
    assert spearman(np.ones(3), np.ones(3)) == 1.0 and spearman(np.ones(3), a[:3]) == 0.0


def test_profile_bars_must_measure_their_kind():
    from pydantic import ValidationError

    from edgepipe.catalog.config import Profile

    with pytest.raises(ValidationError, match="min_cosine does not measure reranking models"):
        Profile.model_validate(
            {"name": "p", "description": "d", "method": "fp32", "task_kinds": ["reranking"], "accuracy": {"min": 0.9}}
        )
    profile = Profile.model_validate(
        {
            "name": "p",
            "description": "d",
            "method": "fp32",
            "task_kinds": ["classification"],
            "accuracy": {"metric": "label_agreement", "min": 0.9, "max_kl": 0.1},
        }
    )
    assert profile.bar("classification").max_kl == 0.1
