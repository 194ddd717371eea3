"""Targets and profiles for decoders: per-kind defaults and bars, int4 settings, old files valid."""

from pathlib import Path

import pytest

from edgepipe import catalog
from edgepipe.catalog.config import Profile, Target, check_fits, load_yaml_model
from edgepipe.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_every_target_has_a_fitting_generation_default():
    profiles = {p.name: p for p in catalog.profiles().all()}
    expected = {
        "rpi5": "arm64-int4",
        "laptop-avx2": "x86-int4",
        "laptop-vnni": "x86-int4",
        "jetson-orin": "jetson-fp16",
    }
    for target in catalog.targets().all():
        name = target.profile_for("generation")
        assert name == expected.get(target.name, name)
        check_fits(target, profiles[name], "text-generation")
        assert profiles[name].bar("generation").metric == "next_token_agreement"
        assert target.profile_for("embedding") == target.default_profile


def test_a_target_file_without_a_generation_default_still_loads(tmp_path):
    text = (ROOT / "targets" / "rpi5.yaml").read_text()
    text = "\n".join(line for line in text.splitlines() if "generation" not in line) + "\n"
    (tmp_path / "rpi5.yaml").write_text(text)
    target = load_yaml_model(tmp_path / "rpi5.yaml", Target)
    assert target.default_generation_profile is None
    with pytest.raises(ConfigError, match="names no default profile for text-generation"):
        target.profile_for("generation")


def test_multi_kind_profiles_keep_their_embedding_bar():
    fp32 = catalog.profiles().load("fp32")
    assert fp32.bar("embedding").metric == "min_cosine" and fp32.bar("embedding").min == 0.9999
    assert fp32.bar("generation").metric == "next_token_agreement"
    jetson = catalog.profiles().load("jetson-fp16")
    assert jetson.accuracy.min == 0.999 and jetson.bar("generation").min < 1


def test_fast_int4_is_the_q4_0_class_and_falls_back_to_the_default():
    """x86-int4-fast: every MatMul 4-bit in blocks of 64 with GPTQ, a 4-bit shared table; missing
    its bar, the laptop's default int4 recipe, then int8."""
    fast = catalog.profiles().load("x86-int4-fast")
    w = fast.weight_only
    assert w is not None and (w.block_size, w.algorithm, w.accuracy_level) == (64, "gptq", 4)
    assert (w.embedding_bits, w.embedding_block_size, w.keep_8bit) == (4, 64, None)
    assert fast.fallbacks == ["x86-int4", "cpu-int8-llm"]
    default = catalog.profiles().load("x86-int4")
    assert fast.bar("generation").min < default.bar("generation").min
    for name in ("laptop-avx2", "laptop-vnni"):
        check_fits(catalog.targets().load(name), fast, "text-generation")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "method: int4\ntask_kinds: [generation]\naccuracy: {metric: next_token_agreement, min: 0.5}",
            "method int4 needs its weight_only settings",
        ),
        ("method: int4\nweight_only: {}\naccuracy: {min: 0.5}", "method int4 is for generation models only"),
        (
            "method: fp32\ntask_kinds: [generation]\naccuracy: {min: 0.5}",
            "accuracy metric min_cosine does not measure generation models",
        ),
        (
            "method: int4\ntask_kinds: [generation]\nweight_only: {block_size: 24}\n"
            "accuracy: {metric: next_token_agreement, min: 0.5}",
            "block_size must be a power of 2",
        ),
        ("method: fp32\nkv_cache: int8\naccuracy: {min: 0.5}", "kv_cache is for generation models only"),
        (
            "method: fp32\ntask_kinds: [generation]\nkv_cache: float16\n"
            "accuracy: {metric: next_token_agreement, min: 0.5}",
            "kv_cache",
        ),
    ],
)
def test_inconsistent_generation_profiles_are_refused(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ndescription: x\n{text}\n")
    with pytest.raises(ConfigError, match=message):
        load_yaml_model(path, Profile)
