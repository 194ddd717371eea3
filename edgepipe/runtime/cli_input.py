"""What the bundle's commands share: their input errors, the texts they read (arguments, stdin,
--file) and the check that the bundle does what the command asks."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from . import integrity
from .tasks import Task

# What each task's bundle does, for the message of a command it does not.
COMMANDS = {
    Task.EMBEDDING: "embed",
    Task.GENERATION: "generate",
    Task.CLASSIFICATION: "classify",
    Task.RERANKING: "rerank",
}


class InputError(Exception):
    """Bad input text: one line for the user, exit code EXIT_INPUT."""


class UsageError(Exception):
    """An option out of range, or a command this bundle's task does not do: exit EXIT_USAGE."""


def _require_task(root: Path, task: Task, command: str) -> None:
    actual = integrity.bundle_task(root)
    if actual != task:
        does = COMMANDS.get(actual)
        hint = f": it does `{does}`" if does else ""
        raise UsageError(f"this is {integrity.a_bundle(actual)}{hint}, not `{command}`")


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
        raise InputError("no text given: pass TEXT arguments, '-' to read lines from stdin, or --file")
    return texts
