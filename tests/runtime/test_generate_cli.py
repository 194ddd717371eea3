"""`python <bundle> generate` on a text-generation bundle, run as a device would, in a subprocess."""

import json
import os
import subprocess
import sys

import pytest

from edgepipe.runtime.generator import Generator


def run_bundle(root, *args, stdin=b""):
    return subprocess.run([sys.executable, str(root), *args], input=stdin, capture_output=True, timeout=120)


def one_line_error(proc, code, message):
    err = proc.stderr.decode()
    assert proc.returncode == code, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert proc.stdout == b""


def test_json_output_equals_the_generator_in_process(decoder_bundle):
    bundle = decoder_bundle("llama")
    proc = run_bundle(bundle.root, "generate", "Turn on the lights", "--max-new-tokens", "12", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert set(record) == {"text", "token_ids", "stop_reason", "timings"}
    expected = Generator.from_bundle(bundle.root).generate("Turn on the lights", max_new_tokens=12)
    assert record["token_ids"] == expected.token_ids and record["text"] == expected.text
    assert record["stop_reason"] == expected.stop_reason
    assert record["timings"]["new_tokens"] == len(expected.token_ids)


def test_streams_text_to_stdout(decoder_bundle):
    bundle = decoder_bundle("gpt2")
    expected = Generator.from_bundle(bundle.root).generate("hello", max_new_tokens=20)
    proc = run_bundle(bundle.root, "generate", "hello", "--max-new-tokens", "20")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == expected.text + "\n"
    piped = run_bundle(bundle.root, "generate", "-", "--max-new-tokens", "20", stdin=b"hello\n")
    assert piped.stdout == proc.stdout


def test_sampling_options_reach_the_generator(decoder_bundle):
    bundle = decoder_bundle("qwen2")
    args = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.9", "--seed", "5", "--json"]
    first = json.loads(run_bundle(bundle.root, "generate", "hello", *args).stdout)
    again = json.loads(run_bundle(bundle.root, "generate", "hello", *args).stdout)
    expected = Generator.from_bundle(bundle.root).generate("hello", temperature=0.9, top_k=40, top_p=0.9, seed=5)
    assert first["token_ids"] == again["token_ids"] == expected.token_ids


def test_stop_and_chat_options(decoder_bundle):
    bundle = decoder_bundle("qwen2")
    g = Generator.from_bundle(bundle.root)
    full = g.generate("hello", chat=True, max_new_tokens=32)
    stop = full.text[6:8]
    proc = run_bundle(bundle.root, "generate", "hello", "--chat", "--stop", stop, "--stop", "zzz", "--json")
    record = json.loads(proc.stdout)
    assert record["stop_reason"] == "stop" and record["text"] == full.text[: full.text.index(stop)]
    assert record["timings"]["prompt_tokens"] == len(g.encode("hello", chat=True))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--temperature", "-1"], "temperature must be 0 (greedy) or more"),
        (["--top-p", "0"], "top_p must be in (0, 1]"),
        (["--top-p", "1.5"], "top_p must be in (0, 1]"),
        (["--top-k", "-2"], "top_k must be an integer of at least 0"),
        (["--max-new-tokens", "0"], "max_new_tokens must be an integer of at least 1"),
        (["--seed", "-1"], "seed must be an integer of at least 0"),
        (["--stop", ""], "stop strings must be a list of non-empty strings"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--temperature", "warm"], "argument --temperature: invalid float value"),
        (["--chat"], "this model has no chat template"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(decoder_bundle, args, message):
    one_line_error(run_bundle(decoder_bundle("llama").root, "generate", "hi", *args), 2, message)


def test_bad_prompts_are_one_line_and_exit_4(decoder_bundle):
    root = decoder_bundle("gpt2").root
    one_line_error(run_bundle(root, "generate", "word " * 400), 4, "reads at most 256 tokens")
    one_line_error(run_bundle(root, "generate", ""), 4, "the prompt is empty")
    one_line_error(run_bundle(root, "generate", "-", stdin=b"\xff\xfe"), 4, "not valid UTF-8")


def test_commands_of_the_other_task_are_refused(decoder_bundle, tiny_bundle):
    root = decoder_bundle("llama").root
    one_line_error(run_bundle(root, "embed", "hi"), 2, "text-generation bundle: it does `generate`")
    one_line_error(run_bundle(root, "bench", "--seq-lens", "8"), 2, "takes --contexts, not shapes")
    embedding = tiny_bundle.bundle_dir
    one_line_error(run_bundle(embedding, "generate", "hi"), 2, "embedding bundle: it does `embed`")


def test_info_names_the_task(decoder_bundle):
    proc = run_bundle(decoder_bundle("qwen2").root, "info")
    info = json.loads(proc.stdout)
    assert info["task"] == "text-generation"
    assert info["generation"] == {"max_length": 256, "eos_token_ids": [2], "chat_template": True}
    assert run_bundle(decoder_bundle("qwen2").root, "verify").returncode == 0


def test_generate_never_imports_the_build_side(decoder_bundle):
    root = decoder_bundle("llama").root
    code = (
        "import runpy, sys; sys.argv = ['b', 'generate', 'hello', '--max-new-tokens', '3'];"
        f"sys.path.insert(0, {str(root)!r})\n"
        "try:\n"
        f"    runpy.run_path({str(root)!r}, run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "bad = [m for m in ('torch', 'transformers', 'optimum', 'edgepipe', 'onnx') if m in sys.modules]\n"
        "print('LOADED', bad, file=sys.stderr)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert "LOADED []" in proc.stderr.decode(), proc.stderr.decode()


def test_streams_utf8_whatever_the_locale(decoder_bundle):
    root = decoder_bundle("llama").root
    expected = Generator.from_bundle(root).generate("Turn on the kitchen lights", max_new_tokens=16)
    assert not expected.text.isascii()  # random weights emit stray bytes: U+FFFD at least
    proc = subprocess.run(
        [
            sys.executable,
            str(root),
            "generate",
            "Turn on the kitchen lights",
            "--max-new-tokens",
            "16",
        ],
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "ascii"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode("utf-8") == expected.text + "\n"
