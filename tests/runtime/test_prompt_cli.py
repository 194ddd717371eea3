"""`python <bundle> prompt CONVERSATION.json [--tokens]` and `generate --chat FILE`: the prompt the
bundle renders with the model's published template, exactly apply_chat_template's, on any day."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.decoders import with_chat_template
from tests.runtime.chat_templates import CONVERSATIONS, source
from tests.runtime.conftest import assemble_bundle


def run_bundle(root, *args, stdin=b"", faketime=None):
    prefix = ["faketime", faketime] if faketime else []
    return subprocess.run([*prefix, sys.executable, str(root), *args], input=stdin, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def published(decoder_bundle, tmp_path_factory):
    """``published(family)``: the tiny Qwen2 decoder as a bundle carrying that family's template."""
    built = {}

    def get(family):
        if family not in built:
            plain = decoder_bundle("qwen2")
            base = tmp_path_factory.mktemp(f"published-{family}")
            model_dir = with_chat_template(plain.model_dir, base / "hf", source(family))
            root = assemble_bundle(model_dir, plain.root / "model" / "model.onnx", base / "bundle", family)
            built[family] = (model_dir, root)
        return built[family]

    return get


def conversation_file(tmp_path, name, **extra):
    messages, tools = CONVERSATIONS[name]
    path = tmp_path / f"{name.replace(' ', '-')}.json"
    path.write_text(json.dumps({"messages": messages, "tools": tools, **extra}))
    return path


@pytest.mark.parametrize("family", ["qwen3", "llama-3.2"])
def test_prompt_prints_apply_chat_template_exactly(published, tmp_path, family):
    from transformers import AutoTokenizer

    model_dir, root = published(family)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for name in ("system", "reasoning history", "tool result"):
        messages, tools = CONVERSATIONS[name]
        path = conversation_file(tmp_path, name)
        proc = run_bundle(root, "prompt", str(path))
        assert proc.returncode == 0, proc.stderr
        kwargs = {"tools": tools, "add_generation_prompt": True}
        assert proc.stdout.decode() == tokenizer.apply_chat_template(messages, tokenize=False, **kwargs), name
        tokens = run_bundle(root, "prompt", str(path), "--tokens")
        assert json.loads(tokens.stdout) == list(tokenizer.apply_chat_template(messages, tokenize=True, **kwargs))


def test_the_date_is_the_days_not_the_builds(published, tmp_path):
    _, root = published("llama-3.2")
    path = conversation_file(tmp_path, "user")
    for day, shown in (("2027-03-04 10:00:00", "04 Mar 2027"), ("2031-11-30 23:00:00", "30 Nov 2031")):
        proc = run_bundle(root, "prompt", str(path), faketime=day)
        assert proc.returncode == 0, proc.stderr
        assert f"Today Date: {shown}" in proc.stdout.decode()


def test_template_kwargs_reach_the_template_and_stdin_works(published):
    _, root = published("qwen3")
    document = {"messages": CONVERSATIONS["user"][0], "chat_template_kwargs": {"enable_thinking": False}}
    proc = run_bundle(root, "prompt", "-", stdin=json.dumps(document).encode())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_generate_answers_a_conversation_file(published, tmp_path):
    _, root = published("qwen3")
    path = conversation_file(tmp_path, "multi-turn")
    ids = json.loads(run_bundle(root, "prompt", str(path), "--tokens").stdout)
    proc = run_bundle(root, "generate", "--chat", str(path), "--max-new-tokens", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["timings"]["prompt_tokens"] == len(ids)
    plain = run_bundle(root, "generate", "--chat", "just a prompt", "--max-new-tokens", "2", "--json")
    assert plain.returncode == 0, plain.stderr  # --chat TEXT keeps its old meaning


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"messages": []}', '"messages" must be a non-empty list'),
        ('{"messages": [{"role": "user", "content": "x"}], "n": 2}', "unknown field 'n'"),
        ('{"messages": [{"role": "user", "content": 3}]}', "messages[0].content must be a string"),
        ("not json", "not a readable JSON conversation"),
    ],
)
def test_a_bad_conversation_is_one_line_and_exit_4(published, tmp_path, document, message):
    _, root = published("qwen3")
    path = tmp_path / "bad.json"
    path.write_text(document)
    proc = run_bundle(root, "prompt", str(path))
    err = proc.stderr.decode()
    assert proc.returncode == 4 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_template_that_raises_is_one_line(published, decoder_bundle, tmp_path):
    plain = decoder_bundle("qwen2")
    model_dir = with_chat_template(
        plain.model_dir,
        tmp_path / "hf",
        "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}{{ messages[0].content }}",
    )
    root = assemble_bundle(model_dir, plain.root / "model" / "model.onnx", tmp_path / "bundle", "strict")
    proc = run_bundle(root, "prompt", str(conversation_file(tmp_path, "system")))
    assert proc.returncode == 4 and proc.stderr.decode() == "error: one message only\n"
    shutil.rmtree(tmp_path / "bundle")
