"""`edgepipe build` for decoders: tiny random Llama, Qwen2 and GPT-2 through the CLI, int4 and fp32.

The builds are few and shared (module fixtures, one stage cache), since CI runs on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edgepipe.cli import main
from tests.decoders import KINDS, MORE_KINDS, make_tiny_decoder

# Hidden size 64: block 16 gives each row four blocks (block 64 would be one scale per row).
TINY_INT4 = """\
name: tiny-int4
description: int4 with a bar a random 2-layer, 64-wide decoder can meet
method: int4
task_kinds: [generation]
weight_only: {block_size: 16, accuracy_level: 4, symmetric: true, embedding_bits: 4}
kv_cache: int8
accuracy: {metric: next_token_agreement, min: 0.05}
"""


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def summary_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    return {kind: make_tiny_decoder(kind, root / f"tiny-{kind}") for kind in KINDS + MORE_KINDS}


@pytest.fixture(scope="module")
def gen_profiles(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gen-profiles")
    (d / "tiny-int4.yaml").write_text(TINY_INT4)
    return d


@pytest.fixture(scope="module")
def int4_builds(decoders, gen_profiles, tmp_path_factory) -> dict[str, tuple[dict, Path]]:
    """Each tiny decoder built for rpi5 with tiny-int4 (no bench), work dirs kept."""
    out, built = tmp_path_factory.mktemp("dist-int4"), {}
    for kind, model in decoders.items():
        work = out / f"work-{kind}"
        summary = summary_of(
            cli(
                "build",
                "--model",
                str(model),
                "--target",
                "rpi5",
                "--profile",
                "tiny-int4",
                "--profiles-dir",
                str(gen_profiles),
                "--out",
                str(out),
                "--work-dir",
                str(work),
                "--no-bench",
                "--json",
            )
        )
        built[kind] = (summary, work)
    return built


@pytest.fixture(scope="module")
def fp32_builds(decoders, tmp_path_factory) -> dict[str, dict]:
    """Each tiny decoder built with --profile fp32; the Llama one benchmarked."""
    out = tmp_path_factory.mktemp("dist-fp32")
    return {
        kind: summary_of(
            cli(
                "build",
                "--model",
                str(model),
                "--target",
                "laptop-avx2",
                "--profile",
                "fp32",
                "--out",
                str(out),
                "--bench-runs",
                "1",
                "--json",
                *(() if kind == "llama" else ("--no-bench",)),
            )
        )
        for kind, model in decoders.items()
    }


def manifest(summary: dict) -> dict:
    return json.loads((Path(summary["bundle_dir"]) / "manifest.json").read_text())


@pytest.mark.parametrize("kind", KINDS)
def test_int4_build_reports_agreement_and_verifies(int4_builds, kind):
    summary, _ = int4_builds[kind]
    assert cli("verify", summary["bundle_dir"]).exit_code == 0
    assert cli("verify", summary["archive"]).exit_code == 0
    m = manifest(summary)
    assert m["task"] == "text-generation" and summary["task"] == "text-generation"
    acc = m["accuracy"]
    assert acc["metric"] == "next_token_agreement" and acc["against"] == "fp32 ONNX model"
    assert 0.0 <= acc["model"]["agreement"] <= 1.0 and acc["model"]["mean_kl"] >= 0.0
    assert acc["model"]["positions"] > acc["model"]["n"] > 10
    # The fp32 export against PyTorch, measured once in the reference stage.
    assert acc["fp32_onnx"]["agreement"] >= 0.99 and acc["fp32_onnx"]["max_abs_logit_diff"] < 1e-3
    runtime = json.loads((Path(summary["bundle_dir"]) / "runtime.json").read_text())
    assert runtime["task"] == "text-generation" and runtime["num_layers"] == 2
    assert "generate" in (Path(summary["bundle_dir"]) / "README.md").read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_int4_graph_shares_one_quantized_table(int4_builds, kind):
    summary, _ = int4_builds[kind]
    graph = onnx.load(str(Path(summary["bundle_dir"]) / "model" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "GatherBlockQuantized" in ops and "MatMulNBits" in ops and "Gemm" not in ops
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    lm_head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits")
    assert gather.input[0] == lm_head.input[1]  # tied: one packed table for both
    inits = {t.name for t in graph.initializer}
    vocab = json.loads((Path(summary["bundle_dir"]) / "tokenizer" / "tokenizer.json").read_text())
    hidden = 64  # make_tiny_decoder's default
    tables = [
        t.name
        for t in graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(vocab["model"]["vocab"]) * hidden in (int(np.prod(t.dims)),)
    ]
    assert tables == []  # no float copy of the embedding table is left
    assert gather.input[0] in inits
    outputs = [o.name for o in graph.output]
    assert outputs[0] == "logits" and graph.output[0].type.tensor_type.elem_type == 1


def test_tied_embeddings_are_stored_once(int4_builds, decoders, tmp_path):
    from edgepipe.runtime.generator import Generator
    from edgepipe.stages import export
    from edgepipe.tasks.decoder_runtime import runtime_config

    summary, work = int4_builds["llama"]
    recorded = manifest(summary)["stages"]["export"]["tied"]
    models = {}
    for dedupe in (False, True):
        dest = tmp_path / f"dedupe-{dedupe}"
        dest.mkdir()
        config = export.ExportConfig(task="text-generation-with-past", dedupe_tied=dedupe)
        export.run(config, decoders["llama"], dest)
        models[dedupe] = dest / "model.onnx"
    plain, deduped = models[False], models[True]
    # The build recorded what this export measures: the same file before and after.
    assert recorded["size_bytes_before"] == plain.stat().st_size
    assert recorded["size_bytes_after"] == deduped.stat().st_size
    count = {p: len(onnx.load(str(p)).graph.initializer) for p in (deduped, plain)}
    assert count[deduped] == count[plain] - recorded["initializers_dropped"]
    # Whether the exporter already shares the tied table (it does when transformers loads the
    # model through accelerate, as it does once accelerate is installed) or dedupe drops the
    # copy, the file holds the [vocab, hidden] table once.
    vocab = json.loads((decoders["llama"] / "config.json").read_text())["vocab_size"]
    tables = [t for t in onnx.load(str(deduped)).graph.initializer if t.dims and t.dims[0] == vocab]
    assert len(tables) == 1
    if recorded["initializers_dropped"]:
        assert deduped.stat().st_size < plain.stat().st_size
    config = runtime_config(decoders["llama"], deduped, 2, 1, ["CPUExecutionProvider"])
    tok = work / "export" / "tokenizer" / "tokenizer.json"
    ids = [1, 40, 41, 42, 43, 44]
    a = Generator(deduped, tok, config).logits(ids)
    b = Generator(plain, tok, config).logits(ids)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_llama_attention_is_fused_in_the_build(int4_builds):
    graph = manifest(int4_builds["llama"][0])["stages"]["export"]["graph"]
    assert graph["attention_layers_fused"] == 2 and graph["skipped"] is None
    assert graph["nodes_after"] < graph["nodes_before"] / 3
    model = onnx.load(str(Path(int4_builds["llama"][0]["bundle_dir"]) / "model" / "model.onnx"))
    assert [n.op_type for n in model.graph.node].count("GroupQueryAttention") == 2
    # int4 quantization keeps what the runtime's in-place KV cache reads.
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta.get("edgepipe.kv_cache") == "shared-buffer"
    assert "logits_to_keep" in {i.name for i in model.graph.input}
    from edgepipe.runtime.generator import Generator

    generator = Generator.from_bundle(Path(int4_builds["llama"][0]["bundle_dir"]))
    assert generator.cache is not None and generator.last_only
    assert generator.config.ram_mb is not None  # the target's budget caps the default context
    # The profile's int8 KV cache: scales calibrated, buffers bound as int8.
    kv = manifest(int4_builds["llama"][0])["stages"]["quantize"]["kv_cache"]
    assert kv["dtype"] == "int8" and kv["skipped"] is None
    assert all(a.dtype == np.int8 for a in generator.cache.arrays.values())
    assert len(generator.generate("hello there", max_new_tokens=8).token_ids) >= 1
    gpt2 = manifest(int4_builds["gpt2"][0])["stages"]["export"]["graph"]
    assert gpt2["attention_layers_fused"] == 0 and "gpt2" in gpt2["skipped"]
    kv = manifest(int4_builds["gpt2"][0])["stages"]["quantize"]["kv_cache"]
    assert kv["dtype"] == "float32" and "not GroupQueryAttention" in kv["skipped"]


@pytest.mark.parametrize("kind", KINDS + MORE_KINDS)
def test_fp32_build_agrees_with_itself(fp32_builds, kind):
    summary = fp32_builds[kind]
    assert cli("verify", summary["bundle_dir"]).exit_code == 0
    m = manifest(summary)
    assert m["profile"]["name"] == "fp32" and m["task"] == "text-generation"
    assert m["accuracy"]["model"]["agreement"] == pytest.approx(1.0, abs=1e-6)
    assert m["accuracy"]["model"]["mean_kl"] == pytest.approx(0.0, abs=1e-6)
    requirements = (Path(summary["bundle_dir"]) / "requirements.txt").read_text().splitlines()
    assert f"jinja2=={m['versions']['jinja2']}" in requirements  # the chat template renders on the device


def test_fp32_bench_keys(fp32_builds):
    summary = fp32_builds["llama"]
    bench = manifest(summary)["bench"]
    for side in ("model", "fp32"):
        assert bench[side]["decode_tokens_per_s"] > 0
        # The measuring process's own peak: not the build's (torch alone is several hundred MB).
        assert 0 < bench[side]["peak_rss_mb"] < 250
        assert bench[side]["time_to_first_token_ms"] > 0 and bench[side]["prefill_tokens_per_s"] > 0
    assert bench["new_tokens"] == 64 and bench["greedy_tokens_equal_fp32"] is True
    assert summary["decode_tokens_per_s"] == bench["model"]["decode_tokens_per_s"]


@pytest.mark.parametrize("kind", KINDS + MORE_KINDS)
def test_fp32_bundle_greedy_tokens_equal_transformers(fp32_builds, decoders, kind):
    """The bundle as built (tied table stored once, attention fused where the model allows)
    generates exactly transformers' greedy tokens, 16 of them, for every supported model type."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM

    from edgepipe.runtime.generator import Generator

    bundle = Path(fp32_builds[kind]["bundle_dir"])
    generator = Generator.from_bundle(bundle)
    eos = set(generator.config.eos_token_ids)
    # EOS off on both sides, so that neither stops early and transformers' min_new_tokens (which
    # bans EOS) cannot change its choice: a fair comparison needs EOS absent from the tokens.
    generator.config = dataclasses.replace(generator.config, eos_token_ids=())
    generator.eos = frozenset()
    model = AutoModelForCausalLM.from_pretrained(str(decoders[kind])).eval()
    for prompt in ("The kitchen lights are", "turn on the lights", "12 + 30 ="):
        ids = generator.encode(prompt)
        got = generator.generate(ids, max_new_tokens=16).token_ids
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=16,
                min_new_tokens=16,
                do_sample=False,
            )
        assert eos and not eos.intersection(got)
        assert got == out[0, len(ids) :].tolist(), f"{kind}: {prompt!r}"


def test_default_profile_comes_from_the_task_and_falls_back(decoders, tmp_path):
    """rpi5's generation default is arm64-int4, tried first; should a 32-wide random model miss
    its bar, the build falls back to cpu-int8-llm."""
    summary = summary_of(
        cli(
            "build",
            "--model",
            str(decoders["qwen2"]),
            "--target",
            "rpi5",
            "--out",
            str(tmp_path),
            "--no-bench",
            "--json",
        )
    )
    tried = [a["profile"] for a in summary["attempts"]]
    assert tried[0] == "arm64-int4" and summary["profile"] == tried[-1]
    assert summary["profile"] in ("arm64-int4", "cpu-int8-llm")
    counts = manifest(summary)["stages"]["quantize"]["op_counts"]
    assert counts.get("GatherBlockQuantized") == 1


@pytest.mark.parametrize(
    ("model_kind", "profile", "message"),
    [
        ("llama", "arm64-int8", "classification, reranking models, not generation"),
        ("bert", "arm64-int4", "is for generation models, not embedding"),
    ],
)
def test_profile_of_the_wrong_task_is_refused(decoders, tiny_bert, tmp_path, model_kind, profile, message):
    model = tiny_bert if model_kind == "bert" else decoders[model_kind]
    result = cli(
        "build",
        "--model",
        str(model),
        "--target",
        "rpi5",
        "--profile",
        profile,
        "--out",
        str(tmp_path / "o"),
        "--no-bench",
    )
    assert result.exit_code == 3
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 2
    out = tmp_path / "o"
    assert not out.exists() or [p for p in out.iterdir() if p.suffix != ".lock"] == []


def test_unsupported_decoder_type_is_refused(decoders, tmp_path):
    model = Path(shutil.copytree(decoders["llama"], tmp_path / "mamba"))
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "model_type": "mamba"}))
    result = cli("build", "--model", str(model), "--target", "rpi5", "--out", str(tmp_path / "o"))
    assert result.exit_code == 4
    assert "model_type 'mamba' is not supported" in result.stderr and "llama" in result.stderr


def test_guard_fails_below_the_bar_with_the_table(decoders, tmp_path):
    strict = tmp_path / "profiles"
    strict.mkdir()
    (strict / "tiny-int4.yaml").write_text(TINY_INT4.replace("min: 0.05", "min: 1.0, max_kl: 0.0001"))
    result = cli(
        "build",
        "--model",
        str(decoders["gpt2"]),
        "--target",
        "rpi5",
        "--profile",
        "tiny-int4",
        "--profiles-dir",
        str(strict),
        "--out",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 5
    assert "no recipe met its bar" in result.stderr and "agreement" in result.stderr
    assert not (tmp_path / "o" / "tiny-gpt2-rpi5").exists()


def test_search_keeps_the_fastest_passing_decoder_recipe(decoders, tmp_path):
    """--search on a decoder: every fitting generation profile tried, each passing one benchmarked
    (decode tok/s), the fastest kept (the shared recipe search, issue 15)."""
    summary = summary_of(
        cli(
            "build",
            "--model",
            str(decoders["llama"]),
            "--target",
            "laptop-avx2",
            "--search",
            "--bench-runs",
            "2",
            "--out",
            str(tmp_path),
            "--json",
        )
    )
    tried = {a["profile"] for a in summary["attempts"]}
    assert {"x86-int4", "cpu-int8-llm", "fp32"} <= tried
    # Each profile's last attempt (after its 8-bit bisection) is the one measured.
    measured = [a for a in summary["attempts"] if "decode_tokens_per_s" in a]
    assert "fp32" in {a["profile"] for a in measured} <= tried  # fp32 always meets its bar
    assert all(a["result"] == "ok" and a["decode_tokens_per_s"] > 0 for a in measured)
    fastest = max(measured, key=lambda a: a["decode_tokens_per_s"])
    assert summary["profile"] == fastest["profile"]


def test_table_block_is_halved_to_divide_the_hidden_size(tmp_path):
    """A table whose hidden size the profile's block does not divide (48 and 64) is quantized in
    the largest halving that does (16), not left float with a float32 lm_head beside it."""
    model = make_tiny_decoder("llama", tmp_path / "tiny-llama-48", hidden=48)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = TINY_INT4.replace("embedding_bits: 4}", "embedding_bits: 4, embedding_block_size: 64}")
    (profiles / "tiny-int4.yaml").write_text(text.replace("kv_cache: int8\n", ""))
    summary = summary_of(
        cli(
            "build",
            "--model",
            str(model),
            "--target",
            "rpi5",
            "--profile",
            "tiny-int4",
            "--profiles-dir",
            str(profiles),
            "--out",
            str(tmp_path / "o"),
            "--no-bench",
            "--json",
        )
    )
    graph = onnx.load(str(Path(summary["bundle_dir"]) / "model" / "model.onnx")).graph
    (gather,) = [n for n in graph.node if n.op_type == "GatherBlockQuantized"]
    lm_head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.output[0] == "logits")
    assert gather.input[0] == lm_head.input[1]
    blocks = {a.name: a.i for n in (gather, lm_head) for a in n.attribute if a.name == "block_size"}
    assert blocks == {"block_size": 16}
    inits = {t.name for t in graph.initializer}
    float_weights = [
        n.name for n in graph.node if n.op_type in ("Gather", "MatMul") and any(i in inits for i in n.input[:2])
    ]
    assert float_weights == []
