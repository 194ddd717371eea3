"""The bundle's command line: ``python <bundle> embed|info|verify|serve``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import integrity, serve

EXIT_USAGE = 2
EXIT_INPUT = 4
EXIT_VERIFY = 6


class InputError(Exception):
    """Bad input text: one line for the user, exit code EXIT_INPUT."""


def _decode_lines(data: bytes, source: str) -> Iterator[str]:
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{source} line {number} is not valid UTF-8") from None
        if "\x00" in line:
            raise InputError(f"{source} line {number} contains a NUL byte")
        yield line


def _texts(args: argparse.Namespace) -> list[str]:
    texts: list[str] = []
    for text in args.texts:
        if text == "-":
            texts.extend(_decode_lines(sys.stdin.buffer.read(), "stdin"))
        else:
            texts.append(text)
    if args.file:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {args.file}: {exc.strerror}") from None
        texts.extend(_decode_lines(data, args.file))
    if not texts:
        raise InputError(
            "no text given: pass TEXT arguments, '-' to read lines from stdin, or --file"
        )
    return texts


def _embed(root: Path, args: argparse.Namespace) -> int:
    from .embedder import Embedder

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


def _info(root: Path, args: argparse.Namespace) -> int:
    manifest = integrity.read_manifest(root)
    keys = ("name", "task", "model", "target", "profile", "accuracy", "bench", "versions")
    print(json.dumps({k: manifest.get(k) for k in keys}, indent=2))
    return 0


def _verify(root: Path, args: argparse.Namespace) -> int:
    problems = integrity.verify_dir(root)
    if problems:
        print(f"error: bundle does not match its manifest: {problems[0]}", file=sys.stderr)
        for extra in problems[1:]:
            print(f"  also: {extra}", file=sys.stderr)
        return EXIT_VERIFY
    print(f"ok: {len(integrity.read_manifest(root)['files'])} files match manifest.json")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python <bundle>", description="Run an edgepipe bundle.")
    sub = p.add_subparsers(dest="command", required=True)
    embed = sub.add_parser("embed", help='print one JSON line {"embedding": [...]} per text')
    embed.add_argument("texts", nargs="*", metavar="TEXT", help="texts; '-' reads lines from stdin")
    embed.add_argument("--file", help="read texts from a file, one per line")
    embed.add_argument(
        "--threads", type=int, default=None, help="intra-op threads (default: target's)"
    )
    sub.add_parser("info", help="print the bundle's model, target, accuracy and benchmark")
    sub.add_parser("verify", help="check every file against manifest.json")
    serve.add_parser(sub)
    return p


def main(root: Path, argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handlers = {"embed": _embed, "info": _info, "verify": _verify, "serve": serve.run}
    handler = handlers[args.command]
    try:
        return handler(root, args)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_VERIFY
