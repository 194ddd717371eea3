"""``python <bundle> bench`` on a text-generation bundle: the edgepipe.bench/2 document."""

import json
import subprocess
import sys

from edgepipe.runtime.integrity import sha256_file

KEYS = {"context_len", "new_tokens", "runs", "time_to_first_token_ms", "prefill_tokens_per_s"}


def run_bundle(root, *args):
    return subprocess.run([sys.executable, str(root), *args], capture_output=True, text=True, timeout=120)


def test_bench_times_first_token_prefill_and_decode(decoder_bundle):
    root = decoder_bundle("llama").root
    proc = run_bundle(
        root, "bench", "--json", "--contexts", "16,64", "--new-tokens", "4", "--runs", "2", "--warmup", "0"
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["schema"], doc["task"]) == ("edgepipe.bench/2", "text-generation")
    assert doc["measured_on"] == "bundle runtime" and doc["provider"] == "CPUExecutionProvider"
    assert [r["context_len"] for r in doc["results"]] == [16, 64]
    for r in doc["results"]:
        assert KEYS | {"decode_tokens_per_s", "complete", "drafted_tokens", "accepted_tokens"} == set(r)
        assert 0 <= r["accepted_tokens"] <= r["drafted_tokens"]
        assert (r["new_tokens"], r["runs"]) == (4, 2)
        assert r["time_to_first_token_ms"] > 0 and r["decode_tokens_per_s"] > 0
    model = doc["models"]["model"]
    assert model["sha256"] == sha256_file(root / "model" / "model.onnx")
    graph = (root / "model/model.onnx").stat().st_size
    assert model["load_ms"] > 0 and model["size_bytes"] == model["graph_bytes"] == graph  # no external data
    assert doc["speculative"] is True  # float32: the default is on
    assert doc["peak_rss_mb"] > 10 and doc["probe"]["schema"] == "edgepipe.probe/1"


def test_default_contexts_fit_the_model_and_text_output(decoder_bundle):
    root = decoder_bundle("llama").root  # 256 positions: of 64/512/1024/2048 only 64 fits
    proc = run_bundle(root, "bench", "--new-tokens", "2", "--runs", "1", "--warmup", "0")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[2].split() == ["context", "runs", "first", "token", "ms", "prefill", "tok/s", "decode", "tok/s"]
    assert len(lines) == 5 and lines[3].split()[:2] == ["64", "1"]
    assert lines[4].startswith("speculative decoding on: ") and "drafted tokens accepted" in lines[4]


def test_a_context_over_the_model_is_one_line_exit_2(decoder_bundle):
    proc = run_bundle(decoder_bundle("llama").root, "bench", "--contexts", "250")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: context 250 and 32 new tokens are over the model's 256 positions\n")


def test_model_size_counts_the_external_weights(decoder_bundle, tmp_path):
    """A decoder bundle keeps its weights in model.onnx.data: the size is both files."""
    import shutil

    import onnx

    root = tmp_path / "bundle"
    shutil.copytree(decoder_bundle("llama").root, root)
    model = onnx.load(root / "model" / "model.onnx")
    onnx.save(model, root / "model" / "model.onnx", save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)  # fmt: skip
    proc = run_bundle(
        root, "bench", "--json", "--contexts", "16", "--new-tokens", "2", "--runs", "1", "--warmup", "0",
        "--no-speculate",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    sizes = [(root / "model" / name).stat().st_size for name in ("model.onnx", "model.onnx.data")]
    assert doc["models"]["model"]["size_bytes"] == sum(sizes) and doc["models"]["model"]["graph_bytes"] == sizes[0]
    assert doc["speculative"] is False and doc["results"][0]["drafted_tokens"] == 0
