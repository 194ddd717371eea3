"""The bundle's command line: ``python <bundle> embed|generate|classify|rerank|bench|...``."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from . import chat_commands, integrity, scoring_commands, serve
from .cli_input import InputError, UsageError, _decode_lines, _require_task, _texts
from .tasks import Task

__all__ = ["InputError", "UsageError", "_decode_lines", "main", "parser"]

EXIT_USAGE = 2
EXIT_SETUP = 3
# What requirements.txt installs; `verify` and `info` run without them.
RUNTIME_REQUIREMENTS = ("onnxruntime", "numpy", "tokenizers")
EXIT_INPUT = 4
EXIT_ACCURACY = 5
EXIT_VERIFY = 6
# What a shell reports for SIGINT and SIGPIPE.
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error here."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _embed(root: Path, args: argparse.Namespace) -> int:
    from .embedder import Embedder

    _require_task(root, Task.EMBEDDING, "embed")
    texts = _texts(args)
    embedder = Embedder.from_bundle(root, threads=args.threads)
    vectors = embedder.embed(texts)
    out = sys.stdout
    for text, vector in zip(texts, vectors, strict=True):
        record: dict[str, object] = {"embedding": [round(float(x), 7) for x in vector]}
        tokens, truncated = embedder.token_count(text)
        if truncated:
            record["truncated"] = True
            record["tokens"] = tokens
        out.write(json.dumps(record) + "\n")
    return 0


def _prompt(args: argparse.Namespace) -> str:
    if args.prompt != "-":
        prompt = args.prompt
    else:
        try:
            prompt = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("stdin is not valid UTF-8") from None
        prompt = prompt.removesuffix("\n")  # what `echo TEXT |` adds
    if "\x00" in prompt:
        raise InputError("the prompt contains a NUL character")
    return prompt


def _generate(root: Path, args: argparse.Namespace) -> int:
    from .generator import GenerationError, Generator, OptionError, PromptError, check_options

    _require_task(root, Task.GENERATION, "generate")
    options = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop or [],
    }
    # `--chat FILE`: a conversation file (an existing file); `--chat TEXT` as before: the prompt.
    conversation = args.chat if isinstance(args.chat, str) and Path(args.chat).is_file() else None
    if isinstance(args.chat, str) and conversation is None:
        if args.prompt is not None:
            raise UsageError(f"--chat {args.chat}: no such conversation file")
        args.prompt = args.chat
    if conversation is not None and args.prompt is not None:
        raise UsageError("give a PROMPT or --chat CONVERSATION.json, not both")
    if conversation is None and args.prompt is None:
        raise UsageError("a PROMPT is needed ('-' reads it from stdin), or --chat CONVERSATION.json")
    try:
        if args.threads is not None and args.threads < 1:
            raise OptionError(f"--threads must be at least 1 (got {args.threads})")
        check_options(**options)
        generator = Generator.from_bundle(root, threads=args.threads, max_context=args.max_context)
        prompt: str | list[int]
        if conversation is not None:
            prompt = chat_commands.conversation_ids(generator, conversation)
        else:
            prompt = _prompt(args)
            if args.chat:
                prompt = generator.encode(prompt, chat=True)
        out = sys.stdout
        if isinstance(out, io.TextIOWrapper):  # a model writes any character, whatever the locale
            out.reconfigure(encoding="utf-8")

        def stream(piece: str) -> None:
            out.write(piece)
            out.flush()

        result = generator.generate(prompt, **options, on_text=None if args.json else stream)
    except KeyboardInterrupt:  # Ctrl-C ends a long generation: no traceback
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except OptionError as exc:
        raise UsageError(str(exc)) from None
    except PromptError as exc:
        raise InputError(str(exc)) from None
    except GenerationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    if args.json:
        out.write(json.dumps(result.to_json(), ensure_ascii=False) + "\n")
    else:
        out.write("\n")
    return 0


def _bench_text(result: dict[str, Any]) -> str:
    """A plain table of the SCHEMA document (the bundle has no rich)."""
    m, fp32 = result["models"]["model"], result["models"]["fp32"]
    lines = [
        f"measured on {result['machine']['cpu']} ({result['machine']['machine']}, "
        f"{' '.join(result['machine']['isa']) or 'no listed ISA features'}), "
        f"{result['threads']} threads, {result['provider']}; target {result['target']['name']} "
        f"({'same arch' if result['machine_matches_target_arch'] else 'a different arch'})",
        f"model {m['size_bytes'] / 1e6:.1f} MB: load {m['load_ms']:.0f} ms, "
        f"first inference {m['first_inference_ms']:.1f} ms; peak RSS {result['peak_rss_mb']} MB",
        f"{'batch':>5} {'seq':>5} {'runs':>5} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
        f"{'mean ms':>9} {'stdev':>7} {'items/s':>9} {'fp32 p50':>9} {'speed-up':>8}",
    ]
    for r in result["results"]:
        s, base = r["model"], r["fp32"]
        lines.append(
            f"{r['batch_size']:>5} {r['seq_len']:>5} {s['runs']:>5} {s['p50_ms']:>9.3f} "
            f"{s['p90_ms']:>9.3f} {s['p99_ms']:>9.3f} {s['mean_ms']:>9.3f} {s['stdev_ms']:>7.3f} "
            f"{s['items_per_s']:>9.1f} {base['p50_ms'] if base else '-':>9} "
            f"{str(r['speedup_vs_fp32']) + 'x' if base else '-':>8}"
        )
    if fp32 is None:
        lines.append("no fp32 baseline measured (pass --baseline-model PATH to compare)")
    return "\n".join(lines)


def _bench_generation(root: Path, args: argparse.Namespace) -> int:
    from . import encoder_bench, probe
    from . import generation_bench as gb

    if args.seq_lens or args.baseline_model or args.batch_sizes != "1":
        raise UsageError("a text-generation bundle takes --contexts, not shapes or a baseline")
    try:
        settings = gb.GenerationSettings(
            contexts=encoder_bench.parse_sizes(args.contexts, "--contexts") if args.contexts else None,
            new_tokens=args.new_tokens,
            runs=3 if args.runs is None else args.runs,
            warmup=1 if args.warmup is None else args.warmup,
            threads=args.threads,
        )
        result = gb.measure(root, settings)
    except encoder_bench.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return encoder_bench.EXIT_LOAD if isinstance(exc, encoder_bench.LoadError) else encoder_bench.EXIT_SHAPE
    result["probe"] = probe.probe()
    print(json.dumps(result, indent=2) if args.json else gb.text(result))
    return 0


def _bench(root: Path, args: argparse.Namespace) -> int:
    from . import encoder_bench, probe

    if integrity.bundle_task(root) == Task.GENERATION:
        return _bench_generation(root, args)
    if args.contexts:
        raise UsageError("--contexts is for text-generation bundles; use --seq-lens")

    def progress(done: int, total: int) -> None:
        print(f"\rbench: {done}/{total} runs", end="" if done < total else "\n", file=sys.stderr)

    try:
        settings = encoder_bench.BenchSettings(
            batch_sizes=encoder_bench.parse_sizes(args.batch_sizes, "--batch-sizes"),
            seq_lens=encoder_bench.parse_sizes(args.seq_lens, "--seq-lens") if args.seq_lens else None,
            runs=30 if args.runs is None else args.runs,
            warmup=5 if args.warmup is None else args.warmup,
            threads=args.threads,
            max_seconds=args.max_seconds,
        )
        request = encoder_bench.bundle_request(
            root,
            settings,
            measured_on="bundle runtime",
            baseline=Path(args.baseline_model) if args.baseline_model else None,
        )
        result = encoder_bench.run_request(request, progress if sys.stderr.isatty() else None)
    except encoder_bench.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return encoder_bench.EXIT_LOAD if isinstance(exc, encoder_bench.LoadError) else encoder_bench.EXIT_SHAPE
    result["probe"] = probe.probe()
    print(json.dumps(result, indent=2) if args.json else _bench_text(result))
    message = encoder_bench.incomplete_message(result)
    if message:
        print(f"warning: {message}", file=sys.stderr)
    return 0


def _probe(root: Path, args: argparse.Namespace) -> int:
    from . import probe

    manifest = integrity.read_manifest(root)
    found = probe.probe()
    target = manifest.get("target") or {}
    problems = probe.mismatches(found, target, manifest.get("profile"))
    if args.json:
        print(json.dumps({**found, "target": target.get("name"), "mismatches": problems}, indent=2))
    else:
        print(probe.describe(found))
        print(f"target      {target.get('name')}: " + ("fits" if not problems else "does not fit"))
        for line in problems:
            print(f"mismatch: {line}")
    return EXIT_SETUP if problems and args.strict else 0


def _selftest(root: Path, args: argparse.Namespace) -> int:
    from . import selftest

    try:
        result = selftest.run(root)
    except selftest.SelftestError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(result, indent=2) if args.json else selftest.text(result))
    return 0 if result["passed"] else EXIT_ACCURACY


def _info(root: Path, args: argparse.Namespace) -> int:
    manifest = integrity.read_manifest(root)
    keys = ("name", "task", "model", "target", "profile", "accuracy", "bench", "versions")
    info = {k: manifest.get(k) for k in keys}
    runtime = integrity.read_runtime(root)
    info["task"] = info["task"] or integrity.bundle_task(root).manifest_name
    if Task.parse(str(info["task"])) == Task.GENERATION:
        info["generation"] = {
            "max_length": runtime.get("max_length"),
            "eos_token_ids": runtime.get("eos_token_ids"),
            "chat_template": runtime.get("chat_template") is not None,
        }
    print(json.dumps(info, indent=2))
    return 0


def _verify(root: Path, args: argparse.Namespace) -> int:
    checked = args.public_key is not None or bool(args.certificate_chain)
    if checked:
        from .signature import KeyFileError, verify_signature

        chain = [Path(p) for p in args.certificate_chain or ()]
        try:  # a SignatureError is a ValueError: main() makes it exit EXIT_VERIFY
            verify_signature(root, args.public_key and Path(args.public_key), chain)
        except KeyFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_SETUP
    problems = integrity.verify_dir(root)
    if problems:
        print(f"error: bundle does not match its manifest: {problems[0]}", file=sys.stderr)
        for extra in problems[1:]:
            print(f"  also: {extra}", file=sys.stderr)
        return EXIT_VERIFY
    signed = "signature checked" if checked else "not signed"
    if not checked and (root / integrity.SIGNATURE).is_file():
        signed = "signed (pass --public-key to check it)"
    print(f"ok: {len(integrity.read_manifest(root)['files'])} files match manifest.json; {signed}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python <bundle>", description="Run an edgepipe bundle.")
    sub = p.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help='print one JSON line {"embedding": [...]} per text')
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts; '-' reads lines from stdin")
    embed.add_argument("--file", help="read texts from a file, one per line")
    embed.add_argument("--threads", type=int, default=None, help="intra-op threads (default: target's)")
    scoring_commands.add_parsers(sub)
    gen = sub.add_parser("generate", help="continue a prompt (text-generation bundles)")
    gen.add_argument("prompt", metavar="PROMPT", nargs="?", help="the prompt; '-' reads it from stdin")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="at most this many (64)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    gen.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    gen.add_argument("--seed", type=int, help="sampling seed: the same seed, the same tokens")
    gen.add_argument("--stop", action="append", metavar="TEXT", help="stop before this text (repeatable)")
    gen.add_argument(
        "--chat",
        nargs="?",
        const=True,
        default=False,
        metavar="CONVERSATION.json",
        help="wrap the prompt in the chat template; or answer a conversation file (as `prompt` takes)",
    )
    gen.add_argument("--threads", type=int, help="intra-op threads (default: target's)")
    gen.add_argument(
        "--max-context",
        type=int,
        help="tokens the KV cache holds, prompt and generated (default: the model's, capped by the target's RAM)",
    )
    gen.add_argument(
        "--json",
        action="store_true",
        help='print {"text", "token_ids", "stop_reason", "timings"} instead of streaming',
    )
    bench = sub.add_parser("bench", help="measure the model's latency on this machine")
    bench.add_argument("--json", action="store_true", help="print the edgepipe.bench JSON")
    bench.add_argument("--batch-sizes", default="1", help="comma-separated (default: 1)")
    bench.add_argument("--seq-lens", help="comma-separated tokens (default: 128 or the maximum)")
    bench.add_argument("--contexts", help="text generation: positions (default: 64,512,1024,2048)")
    bench.add_argument("--new-tokens", type=int, default=32, help="text generation: per run (32)")
    bench.add_argument("--runs", type=int, help="timed runs per shape (30; text generation: 3)")
    bench.add_argument("--warmup", type=int, help="untimed runs first (5; text generation: 1)")
    bench.add_argument("--threads", type=int, help="intra-op threads (default: target's)")
    bench.add_argument("--max-seconds", type=float, help="stop early past this time limit")
    bench.add_argument("--baseline-model", help="an fp32 ONNX file to time beside it")
    probe = sub.add_parser("probe", help="describe this machine and what of it misses the target")
    probe.add_argument("--json", action="store_true", help="print the edgepipe.probe/1 JSON")
    probe.add_argument("--strict", action="store_true", help="exit 3 when something does not fit")
    selftest = sub.add_parser("selftest", help="re-run the build's accuracy check on this machine")
    selftest.add_argument("--json", action="store_true", help="print the edgepipe.selftest/1 JSON")
    sub.add_parser("info", help="print the bundle's model, target, accuracy and benchmark")
    check = sub.add_parser("verify", help="check every file against manifest.json")
    trust = check.add_mutually_exclusive_group()
    trust.add_argument(
        "--public-key",
        metavar="PEM",
        help="first check the signature (model.sig) with this EC public key (needs model-signing)",
    )
    trust.add_argument(
        "--certificate-chain",
        action="append",
        metavar="PEM",
        help="or check a certificate-signed bundle against these certificates (repeatable)",
    )
    chat_commands.add_parser(sub)
    serve.add_parser(sub)
    return p


def main(root: Path, argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handlers = {
        "embed": _embed,
        "generate": _generate,
        "classify": scoring_commands.classify,
        "rerank": scoring_commands.rerank,
        "bench": _bench,
        "info": _info,
        "probe": _probe,
        "selftest": _selftest,
        "verify": _verify,
        "serve": serve.run,
        "prompt": chat_commands.prompt,
    }
    handler = handlers[args.command]
    try:
        return handler(root, args)
    except ModuleNotFoundError as exc:
        if exc.name not in RUNTIME_REQUIREMENTS:
            raise
        print(
            f"error: this bundle needs {exc.name}, which this Python lacks: pip install -r {root / 'requirements.txt'}",
            file=sys.stderr,
        )
        return EXIT_SETUP
    except BrokenPipeError:  # the reader left (`| head`): stop quietly, as the shell's tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_VERIFY
