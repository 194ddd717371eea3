from pathlib import Path

import pytest

from edgepipe import catalog
from edgepipe.catalog.config import Profile, Target, check_fits, load_yaml_model
from edgepipe.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_builtin_targets_and_profiles_load_and_reference_each_other():
    targets = catalog.targets().all()
    profiles = {p.name: p for p in catalog.profiles().all()}
    assert {t.name for t in targets} >= {"rpi5", "laptop-avx2", "laptop-vnni", "jetson-orin"}
    for target in targets:
        profile = profiles[target.default_profile]
        check_fits(target, profile, "embedding")
    rpi5 = catalog.targets().load("rpi5")
    assert rpi5.platform.arch == "aarch64" and rpi5.cpu.cores == 4 and "dotprod" in rpi5.cpu.isa
    for name in ("x86-avx2-int8", "x86-vnni-int8", "arm64-int8"):
        q = profiles[name].quantization
        assert q.per_channel and q.smooth_alpha == 0.65 and q.keep_float.max_nodes == 12
        assert profiles[name].accuracy.min == 0.99
    assert profiles["jetson-int8"].fallbacks == ["jetson-fp16"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rpi5_text() -> str:
    return (ROOT / "targets" / "rpi5.yaml").read_text()


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "name: bad\ncpu: [unclosed\nplatform: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+: malformed YAML"):
        load_yaml_model(path, Target)


def test_unknown_key_names_the_field(tmp_path):
    path = write(tmp_path, "rpi5.yaml", rpi5_text().replace("memory_mb:", "colour: red\nmemory_mb:"))
    with pytest.raises(ConfigError, match=r"rpi5\.yaml: target field 'colour': unknown key"):
        load_yaml_model(path, Target)


def test_missing_nested_key_names_the_path(tmp_path):
    path = write(tmp_path, "rpi5.yaml", rpi5_text().replace("  cores: 4\n", ""))
    with pytest.raises(ConfigError, match=r"target field 'cpu\.cores': missing key"):
        load_yaml_model(path, Target)


def test_wrong_type_and_bad_version_range(tmp_path):
    path = write(tmp_path, "rpi5.yaml", rpi5_text().replace("cores: 4", "cores: many"))
    with pytest.raises(ConfigError, match=r"'cpu\.cores': Input should be a valid integer"):
        load_yaml_model(path, Target)
    path.write_text(rpi5_text().replace('">=1.20,<2"', '"newest please"'))
    with pytest.raises(ConfigError, match=r"'runtime\.onnxruntime'.*not a version range"):
        load_yaml_model(path, Target)


def test_not_a_mapping(tmp_path):
    path = write(tmp_path, "x.yaml", "- just\n- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_yaml_model(path, Profile)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown target 'rpi4': did you mean 'rpi5'\?"):
        catalog.targets().load("rpi4")


def test_user_directory_adds_and_overrides(tmp_path, monkeypatch):
    write(tmp_path, "my-board.yaml", rpi5_text().replace("name: rpi5", "name: my-board"))
    found = catalog.targets([tmp_path]).load("my-board")
    assert found.name == "my-board"
    monkeypatch.setenv("EDGEPIPE_TARGETS_PATH", str(tmp_path))
    assert "my-board" in catalog.targets().files()


def test_name_must_match_file(tmp_path):
    write(tmp_path, "other.yaml", rpi5_text())
    with pytest.raises(ConfigError, match="must match the file name 'other'"):
        catalog.targets([tmp_path]).load("other")


def test_missing_targets_dir_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="targets directory does not exist"):
        catalog.targets([tmp_path / "nope"])


def test_fp16_profile_does_not_fit_a_cpu_only_target():
    with pytest.raises(ConfigError, match="needs TensorrtExecutionProvider or CUDA.*'rpi5' does not"):
        check_fits(catalog.targets().load("rpi5"), catalog.profiles().load("jetson-fp16"), "embedding")
