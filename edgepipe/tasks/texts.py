"""Texts for every task kind: the built-in evaluation and calibration sets, or a user's file."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import ConfigError


def builtin_texts() -> list[str]:
    text = resources.files("edgepipe").joinpath("data/eval_texts.txt").read_text(encoding="utf-8")
    return [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]


def builtin_calibration_texts() -> list[str]:
    """Texts for calibrating activation ranges: kept apart from the evaluation set on purpose."""
    text = (
        resources.files("edgepipe")
        .joinpath("data/calibration_texts.txt")
        .read_text(encoding="utf-8")
    )
    return [line for line in text.splitlines() if line.strip()]


def load_texts(path: Path) -> list[str]:
    """Texts from a file: one per line, or JSONL with a "text" field per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read evaluation texts: {exc}") from None
    texts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                record = json.loads(line)
                texts.append(str(record["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(
                    f'{path}: line {number} is not a JSON object with a "text" field'
                ) from None
        else:
            texts.append(line)
    if not texts:
        raise ConfigError(f"{path}: no evaluation texts in the file")
    return texts
