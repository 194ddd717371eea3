"""Hugging Face hub ids as `--model`: resolved through a hub cache laid out in the test, offline
(HF_HUB_OFFLINE=1); `--download` against a loopback fake of the hub's API, never the network."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from edgepipe import catalog, cli, sources
from edgepipe.cli import main
from edgepipe.engine.spec import choose_profiles
from edgepipe.errors import ModelError
from edgepipe.sources import hub
from edgepipe.trust import sbom
from tests.hub_cache import add_snapshot, commit_of, fake_hub, model_files
from tests.test_sbom import validate

MAIN = commit_of("org/tiny main")
OLD = commit_of("org/tiny old")


@pytest.fixture(scope="module")
def hf_home(tiny_bert_master, tmp_path_factory):
    """An HF_HOME whose hub cache holds org/tiny: main at MAIN, and an older commit OLD (the same
    files and a README) that no ref names."""
    home = tmp_path_factory.mktemp("hf")
    files = model_files(tiny_bert_master)
    add_snapshot(home / "hub", "org/tiny", files, MAIN)
    add_snapshot(home / "hub", "org/tiny", {**files, "README.md": b"old"}, OLD, ref=None)
    return home


@pytest.fixture
def env(hf_home, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_ENDPOINT"):
        monkeypatch.delenv(variable, raising=False)
    return hf_home


@pytest.fixture
def damaged(env, tiny_bert_master):
    """A second cached repo, org/damaged, whose snapshot directory a test may change."""
    snapshot = add_snapshot(env / "hub", "org/damaged", model_files(tiny_bert_master), MAIN)
    yield snapshot
    shutil.rmtree(env / "hub" / "models--org--damaged")


@pytest.mark.parametrize(
    ("model", "revision", "commit"),
    [("org/tiny", "main", MAIN), ("org/tiny@main", "main", MAIN), (f"org/tiny@{OLD}", OLD, OLD)],
)
def test_resolve_by_id_by_revision_and_by_commit(env, tiny_bert_master, model, revision, commit):
    source = sources.resolve(model)
    assert source.kind == "hub" and source.name == "tiny" and source.task == "embedding"
    assert source.path == env / "hub" / "models--org--tiny" / "snapshots" / commit
    described = source.describe()
    assert described["repo_id"] == "org/tiny" and described["revision"] == revision
    assert described["commit"] == commit and described["ref"] == f"org/tiny@{commit}"
    same_files = sources.directory_digest(tiny_bert_master) == source.digest
    assert same_files == (commit == MAIN)  # OLD has a README too
    assert sources.peek_task(model) == "embedding"


def test_offline_download_takes_the_cache_as_it_is(env):
    assert sources.download("org/tiny@main", offline=True) == MAIN
    assert sources.download(f"org/tiny@{OLD}", offline=True) == OLD


def test_the_targets_default_profile_comes_from_the_cached_config(env):
    target = catalog.targets().load("rpi5")
    chosen, _ = choose_profiles(target, catalog.profiles(), "org/tiny", None, False)
    assert chosen.name == target.profile_for("embedding")


def test_an_existing_path_wins(env, tiny_bert_master, tmp_path, monkeypatch):
    shutil.copytree(tiny_bert_master, tmp_path / "org" / "tiny")
    monkeypatch.chdir(tmp_path)
    source = sources.resolve("org/tiny")
    assert source.kind == "directory" and source.path == (tmp_path / "org" / "tiny").resolve()


def test_a_name_without_org_is_a_path(env):
    with pytest.raises(
        ModelError,
        match="gpt2: model directory does not exist; a hub model is named org/name or org/name@revision",
    ):
        sources.resolve("gpt2")


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("org/-tiny", "'-tiny' must be letters, digits"),
        ("org/ti--ny", "without '--' or '..'"),
        ("org/ti ny", "'ti ny' must be letters"),
        ("org/tiny@", "empty revision after '@'"),
        ("org/tiny@../../etc", "revision '../../etc' is not a branch, tag or commit name"),
        (f"org/{'x' * 96}", "longer than 96 characters"),
    ],
)
def test_a_bad_id_is_refused(env, model, why):
    with pytest.raises(ModelError, match="not a Hugging Face hub id") as caught:
        sources.resolve(model)
    assert why in str(caught.value) and "org/name@revision" in str(caught.value)
    assert sources.peek_task(model) is None


@pytest.mark.parametrize("model", ["org/nope", "org/tiny@v9", f"org/tiny@{commit_of('x')}"])
def test_not_cached(env, model):
    with pytest.raises(ModelError, match="not in the Hugging Face cache") as caught:
        sources.resolve(model)
    assert "rerun with --download" in str(caught.value) and "hf download org/" in str(caught.value)
    assert sources.peek_task(model) is None


def test_unsafe_snapshots_are_refused_like_a_directory(damaged):
    weights = damaged / "model.safetensors"
    weights.rename(damaged / "pytorch_model.bin")
    with pytest.raises(ModelError, match="only pickle weights.*--allow-pickle"):
        sources.resolve("org/damaged")
    assert sources.resolve("org/damaged", allow_pickle=True).allow_pickle
    (damaged / "pytorch_model.bin").rename(weights)
    config = json.loads((damaged / "config.json").read_text())
    (damaged / "config.json").unlink()  # a link into blobs/: replaced, not written through
    (damaged / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(ModelError, match="needs its own Python code.*--trust-remote-code"):
        sources.resolve("org/damaged")


def test_a_snapshot_with_a_missing_blob_is_refused(damaged):
    (damaged / "model.safetensors").resolve().unlink()
    with pytest.raises(ModelError, match=r"snapshot \w+ is incomplete \(model.safetensors points"):
        sources.resolve("org/damaged")


def build(*args):
    return CliRunner().invoke(main, ["build", "--bench-runs", "2", *args])


def test_not_cached_is_one_line_exit_4_and_nothing_written(env, tmp_path):
    for extra in ([], ["--download"]):  # HF_HUB_OFFLINE=1 forbids --download's fetch
        result = build("--model", "org/nope", "--target", "rpi5", "--out", str(tmp_path), *extra)
        assert result.exit_code == 4, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "org/nope: no such directory, and not in the Hugging" in errors[0]
        assert ("HF_HUB_OFFLINE is set, which forbids --download" in errors[0]) == bool(extra)
        assert "Traceback" not in result.output and not list(tmp_path.iterdir())
    result = build("--model", "org/x[1]", "--target", "rpi5", "--out", str(tmp_path))
    assert result.exit_code == 4 and "not a Hugging Face hub id ('x[1]' must be" in result.output
    assert "a hub id is org/name or org/name@revision" in result.output  # brackets shown as text


def test_build_from_the_hub_cache(env, profiles_dir, tmp_path):
    out = tmp_path / "dist"
    result = build(
        "--model",
        "org/tiny",
        "--target",
        "rpi5",
        "--profile",
        "tiny-int8",
        "--profiles-dir",
        str(profiles_dir),
        "--out",
        str(out),
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["bundle_dir"].endswith("tiny-rpi5") and summary["accuracy"]["min"] >= 0.5
    manifest = json.loads((out / "tiny-rpi5" / "manifest.json").read_text())
    source = manifest["model"]["source"]
    assert source["kind"] == "hub" and source["ref"] == f"org/tiny@{MAIN}"
    assert (source["repo_id"], source["revision"], source["commit"]) == ("org/tiny", "main", MAIN)
    text = (out / "tiny-rpi5" / sbom.SBOM).read_text()
    validate(text)
    document = json.loads(text)
    (model,) = [c for c in document["components"] if c["type"] == "machine-learning-model"]
    assert model["purl"] == f"pkg:huggingface/org/tiny@{MAIN}"
    assert CliRunner().invoke(main, ["verify", str(out / "tiny-rpi5.tar.gz")]).exit_code == 0


@pytest.fixture
def hub_online(env, tiny_bert_master, tmp_path, monkeypatch):
    """An empty hub cache, HF_HUB_OFFLINE unset, and HF_ENDPOINT at a loopback fake hub with
    org/tiny (its safetensors beside pickle, ONNX and code files) and org/pickled (pickle only).
    Any request to another host goes to a proxy on a closed loopback port, so none can leave."""
    files = model_files(tiny_bert_master)
    extra = {"pytorch_model.bin": b"pickle", "onnx/model.onnx": b"onnx", "modeling_x.py": b"code"}
    pickled = {k: v for k, v in files.items() if k != "model.safetensors"}
    repos = {
        "org/tiny": (MAIN, {**files, **extra}),
        "org/pickled": (OLD, {**pickled, "pytorch_model.bin": files["model.safetensors"]}),
    }
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with fake_hub(repos) as (endpoint, fetched):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        yield tmp_path / "hf" / "hub", fetched, files


def test_download_fetches_only_safetensors_configs_and_tokenizer(hub_online):
    cache, fetched, files = hub_online
    assert sources.download("org/tiny", offline=False) == MAIN
    assert sorted(fetched) == sorted(f"org/tiny/{name}" for name in files)
    source = sources.resolve("org/tiny")  # now from the cache, offline
    assert source.describe()["commit"] == MAIN and (cache / "models--org--tiny/refs/main").is_file()
    with pytest.raises(ModelError, match="only pickle weights \\(pytorch_model.bin\\) on the hub"):
        sources.download("org/pickled", offline=False)
    assert sources.download("org/pickled", offline=False, allow_pickle=True) == OLD
    assert "org/pickled/pytorch_model.bin" in fetched
    with pytest.raises(ModelError, match="cannot download from the Hugging Face hub: no such"):
        sources.download("org/nope", offline=False)
    assert sources.download(str(cache), offline=False) is None  # a directory: nothing to fetch


def test_download_falls_back_to_the_cache_when_the_hub_cannot_be_reached(hub_online, monkeypatch):
    sources.download("org/tiny", offline=False)
    with fake_hub({}) as (endpoint, _):
        pass  # the port is closed again: connections are refused
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    assert sources.download("org/tiny", offline=False) == MAIN
    with pytest.raises(ModelError, match="org/other: cannot download .* cannot be reached"):
        sources.download("org/other", offline=False)


def test_build_download_through_the_cli(hub_online, profiles_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(cli.common, "USER_HUB_OFFLINE", None)  # as if the user had not set it
    result = build(
        "--model",
        "org/tiny@main",
        "--download",
        "--target",
        "rpi5",
        "--profile",
        "tiny-int8",
        "--profiles-dir",
        str(profiles_dir),
        "--out",
        str(tmp_path / "dist"),
        "--no-bench",
    )
    assert result.exit_code == 0, result.output
    assert f"org/tiny@main: snapshot {MAIN} in the Hugging Face cache" in result.output
    manifest = json.loads((tmp_path / "dist" / "tiny-rpi5" / "manifest.json").read_text())
    assert manifest["model"]["source"]["commit"] == MAIN
    assert hub.is_true("1") and not hub.is_true("0") and not hub.is_true(None)
