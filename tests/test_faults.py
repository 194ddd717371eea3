"""Bad input and faults through the CLI: exit code, one-line message, and the output dir after."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from onnx.external_data_helper import convert_model_to_external_data

from edgepipe.cli import main
from edgepipe.runtime.integrity import bundle_files, sha256_file

ROOT = Path(__file__).resolve().parent.parent
EDGEPIPE = [sys.executable, "-m", "edgepipe"]


def build(*args):
    return CliRunner().invoke(main, ["build", "--bench-runs", "2", *args])


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def damage_weights_lfs(model: Path):
    (model / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\n")


def damage_weights_truncated(model: Path):
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:-64])


def damage_pickle_only(model: Path):
    (model / "model.safetensors").rename(model / "pytorch_model.bin")


def damage_custom_code(model: Path):
    config = json.loads((model / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_x.X"}
    (model / "config.json").write_text(json.dumps(config))


def damage_arch(model: Path):
    config = json.loads((model / "config.json").read_text())
    config["model_type"] = "whisper"
    (model / "config.json").write_text(json.dumps(config))


def damage_tokenizer(model: Path):
    (model / "tokenizer.json").unlink()


def damage_no_weights(model: Path):
    (model / "model.safetensors").unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_weights_lfs, "a Git LFS pointer, not weights"),
        (damage_weights_truncated, "truncated or corrupt, re-download it"),
        (damage_pickle_only, "only pickle weights"),
        (damage_custom_code, "--trust-remote-code"),
        (damage_arch, "model_type 'whisper' is not supported; supported: bert"),
        (damage_tokenizer, "no tokenizer.json"),
        (damage_no_weights, "no model weights"),
    ],
)
def test_bad_model_exit_4_and_nothing_written(tiny_bert, tmp_path, damage, message):
    damage(tiny_bert)
    out = tmp_path / "out"
    result = build("--model", str(tiny_bert), "--target", "rpi5", "--out", str(out))
    assert result.exit_code == 4
    assert message in one_error_line(result.output)
    assert not out.exists() or list(out.iterdir()) == []


def test_malformed_target_file_names_file_and_line(tmp_path, tiny_bert_master):
    bad = tmp_path / "board.yaml"
    bad.write_text((ROOT / "targets" / "rpi5.yaml").read_text().replace("cores: 4", "cores: [4"))
    result = build("--model", str(tiny_bert_master), "--target", str(bad), "--out", str(tmp_path / "o"))
    assert result.exit_code == 3
    assert "board.yaml: line" in one_error_line(result.output) and "malformed YAML" in result.output
    assert not (tmp_path / "o").exists()


def test_opset_newer_than_the_targets_runtime_is_refused(tmp_path, tiny_bert_master):
    old = tmp_path / "old-board.yaml"
    text = (ROOT / "targets" / "rpi5.yaml").read_text()
    old.write_text(text.replace("name: rpi5", "name: old-board").replace('">=1.20,<2"', '">=1.13,<2"'))
    result = build("--model", str(tiny_bert_master), "--target", str(old), "--out", str(tmp_path / "o"))
    assert result.exit_code == 3
    line = one_error_line(result.output)
    assert "needs ONNX opset 18" in line and "admits onnxruntime 1.13" in line and "opset <= 17" in line
    assert not any((tmp_path / "o").glob("tiny-bert*"))


def rehash(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"] = {rel: sha256_file(p) for rel, p in bundle_files(bundle).items()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_external_data_escaping_the_bundle_is_refused(tiny_bundle, tmp_path):
    bundle = Path(shutil.copytree(tiny_bundle.bundle_dir, tmp_path / "b"))
    model = onnx.load(str(bundle / "model" / "model.onnx"))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    onnx.save(model, str(bundle / "model" / "model.onnx"))
    rewritten = (bundle / "model" / "model.onnx").read_bytes().replace(b"weights.bin", b"../../etc/x")
    (bundle / "model" / "model.onnx").write_bytes(rewritten)
    rehash(bundle)  # a manifest forged to match: the hashes alone would pass
    result = CliRunner().invoke(main, ["verify", str(bundle)])
    assert result.exit_code == 6
    assert "external data '../../etc/x' lies outside the model's directory" in one_error_line(result.output)


# Killed after each finished stage's line: during reference, quantize+evaluate, bench, bundle.
@pytest.mark.parametrize("stage", ["export", "reference", "evaluate/tiny-int8", "bench/tiny-int8"])
def test_killed_build_leaves_the_previous_bundle_and_the_next_build_succeeds(
    tiny_bundle, tiny_bert_master, profiles_dir, tmp_path, stage
):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(tiny_bundle.bundle_dir, out / tiny_bundle.bundle_dir.name)
    shutil.copy(tiny_bundle.archive, out / tiny_bundle.archive.name)
    before = {p.name: sha256_file(p) for p in out.glob("*.tar.gz")}
    env = {**os.environ, "EDGEPIPE_CACHE_DIR": str(tmp_path / "cache")}
    args = [
        *EDGEPIPE,
        "build",
        "--model",
        str(tiny_bert_master),
        "--target",
        "laptop-avx2",
        "--profile",
        "tiny-int8",
        "--profiles-dir",
        str(profiles_dir),
        "--out",
        str(out),
        "--bench-runs",
        "2",
    ]
    proc = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # a stage's line is printed when it is done: the next one is running
        seen.append(line)
        if line.startswith(f"✓ {stage} "):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, seen
    assert {p.name: sha256_file(p) for p in out.glob("*.tar.gz")} == before
    assert CliRunner().invoke(main, ["verify", str(out / tiny_bundle.bundle_dir.name)]).exit_code == 0
    for entry in (tmp_path / "cache").glob("*/*"):  # no half-written entry is a usable one
        assert entry.name.startswith(".tmp-") or (entry / "record.json").is_file()
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    assert CliRunner().invoke(main, ["verify", str(out / tiny_bundle.archive.name)]).exit_code == 0


def test_disk_full_is_one_line_and_leaves_no_temp_files(tiny_bert_master, profiles_dir, tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    out = tmp_path / "full"
    out.mkdir()
    build_cmd = " ".join(
        [
            *EDGEPIPE,
            "build",
            "--model",
            str(tiny_bert_master),
            "--target",
            "laptop-avx2",
            "--profile",
            "tiny-int8",
            "--profiles-dir",
            str(profiles_dir),
            "--out",
            str(out),
            "--bench-runs",
            "2",
            "--no-cache",
        ]
    )
    script = f"mount -t tmpfs -o size=200k tmpfs {out} && {build_cmd}; echo rc=$?; ls -A {out}"
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300)
    if "mount" in proc.stderr and "rc=" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    assert "rc=8" in proc.stdout, proc.stdout + proc.stderr
    assert "no space left on the device" in one_error_line(proc.stderr)
    left = proc.stdout.split("rc=8", 1)[1].split()
    assert [name for name in left if not name.endswith(".lock")] == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("memory_mb:", "colour: red\nmemory_mb:"),
            "target field 'colour': unknown key",
        ),
        (lambda t: t.replace("  cores: 4\n", ""), "target field 'cpu.cores': missing key"),
    ],
)
def test_unknown_or_missing_target_keys_exit_3(tmp_path, tiny_bert_master, edit, message):
    path = tmp_path / "rpi5.yaml"
    path.write_text(edit((ROOT / "targets" / "rpi5.yaml").read_text()))
    result = build("--model", str(tiny_bert_master), "--target", str(path), "--out", str(tmp_path / "o"))
    assert result.exit_code == 3 and message in one_error_line(result.output)
    assert not (tmp_path / "o").exists()


def external(bundle: Path, location: str) -> None:
    """Move the model's weights to external data, then point every tensor at ``location``."""
    path = bundle / "model" / "model.onnx"
    model = onnx.load(str(path))
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    onnx.save(model, str(path))
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(model.SerializeToString())


def test_external_data_absolute_or_symlinked_is_refused(tiny_bundle, tmp_path):
    absolute = Path(shutil.copytree(tiny_bundle.bundle_dir, tmp_path / "abs"))
    external(absolute, "/etc/hostname")
    rehash(absolute)
    result = CliRunner().invoke(main, ["verify", str(absolute)])
    assert result.exit_code == 6 and "'/etc/hostname' lies outside" in one_error_line(result.output)

    linked = Path(shutil.copytree(tiny_bundle.bundle_dir, tmp_path / "link"))
    external(linked, "w.bin")
    (linked / "model" / "w.bin").rename(tmp_path / "real.bin")
    (linked / "model" / "w.bin").symlink_to(tmp_path / "real.bin")
    rehash(linked)
    result = CliRunner().invoke(main, ["verify", str(linked)])
    assert result.exit_code == 6  # the symlink is refused: by the file walk or the model check
    assert "symlink" in one_error_line(result.output)


def test_empty_text_is_embedded_not_an_error(tiny_bundle):
    proc = subprocess.run([sys.executable, str(tiny_bundle.bundle_dir), "embed", ""], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    vector = json.loads(proc.stdout)["embedding"]
    assert len(vector) == 32 and abs(sum(v * v for v in vector) - 1.0) < 1e-5
