"""Texts for every task kind: the built-in evaluation and calibration sets, or a user's file."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

# The built-in sets per task kind. Embeddings: single words, commands, long paragraphs, eight
# languages, code, numbers, emoji. Decoders: paragraphs of prose, chat turns, code, German and
# French, long enough (60-120 tokens) for next-token scores that mean something; their
# calibration set (GPTQ's statistics) shares no text with the evaluation set.
_EVAL = {"embedding": "data/eval_texts.txt", "generation": "data/generation_eval_texts.txt"}
_CALIBRATION = {
    "embedding": "data/calibration_texts.txt",
    "generation": "data/generation_calibration_texts.txt",
}


def _lines(name: str) -> list[str]:
    """Non-empty lines of a packaged text file; a literal \\n in a line is a line break."""
    text = resources.files("edgepipe").joinpath(name).read_text(encoding="utf-8")
    return [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]


def builtin_texts(kind: str) -> list[str]:
    """The built-in evaluation texts of a task kind."""
    return _lines(_EVAL[kind])


def builtin_calibration_texts(kind: str) -> list[str]:
    """Texts for calibration (activation ranges, GPTQ): kept apart from the evaluation set."""
    return _lines(_CALIBRATION[kind])


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
