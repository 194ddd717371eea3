"""Texts for every task kind: the built-in evaluation and calibration sets, or a user's file."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

# The built-in sets per task kind. Embeddings: single words, commands, long paragraphs, eight
# languages, code, numbers, emoji. Decoders: paragraphs of prose, chat turns, code, German and
# French, long enough (60-120 tokens) for next-token scores that mean something; their
# calibration set (GPTQ's statistics) shares no text with the evaluation set.
# Classifiers and rerankers read the embeddings' sets: short commands to long paragraphs, many
# languages, code and numbers are what an intent router or an on-device search sees too.
_EVAL = {
    "embedding": "data/eval_texts.txt",
    "generation": "data/generation_eval_texts.txt",
    "classification": "data/eval_texts.txt",
    "reranking": "data/eval_texts.txt",
}
_CALIBRATION = {
    "embedding": "data/calibration_texts.txt",
    "generation": "data/generation_calibration_texts.txt",
    "classification": "data/calibration_texts.txt",
    "reranking": "data/calibration_texts.txt",
}
# Built-in reranking pairs: the evaluation texts in groups of PAIR_GROUP; the first
# QUERIES_PER_GROUP texts of a group are each a query against every text of the group, itself
# included (the one exact match gives each query a clearly most relevant document).
PAIR_GROUP, QUERIES_PER_GROUP = 8, 2


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
                raise ConfigError(f'{path}: line {number} is not a JSON object with a "text" field') from None
        else:
            texts.append(line)
    if not texts:
        raise ConfigError(f"{path}: no evaluation texts in the file")
    return texts


# (query, document) pairs and each pair's query number: what a reranker is evaluated on.
Pairs = tuple[list[tuple[str, str]], list[int]]


def builtin_pairs() -> Pairs:
    """The built-in reranking pairs (see PAIR_GROUP): 14 queries of 8 documents each."""
    texts = builtin_texts("reranking")
    pairs: list[tuple[str, str]] = []
    queries: list[int] = []
    for start in range(0, len(texts) - PAIR_GROUP + 1, PAIR_GROUP):
        group = texts[start : start + PAIR_GROUP]
        for query in group[:QUERIES_PER_GROUP]:
            pairs.extend((query, document) for document in group)
            queries.extend([len(set(queries))] * len(group))
    return pairs, queries


def load_pairs(path: Path) -> Pairs:
    """Reranking pairs from a JSONL file, one {"query": ..., "document": ...} per line; the pairs
    of one query text are ranked against each other."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read evaluation pairs: {exc}") from None
    pairs: list[tuple[str, str]] = []
    numbers: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            pair = (record["query"], record["document"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pair = None
        if pair is None or not all(isinstance(x, str) for x in pair):
            raise ConfigError(f'{path}: line {number} is not a JSON object with "query" and "document" strings')
        numbers.setdefault(pair[0], len(numbers))
        pairs.append(pair)
    if not pairs:
        raise ConfigError(f'{path}: no pairs in the file (JSONL: {{"query": ..., "document": ...}})')
    counts = Counter(q for q, _ in pairs)
    alone = next((q for q, n in counts.items() if n < 2), None)
    if alone is not None:
        raise ConfigError(
            f"{path}: query {alone[:40]!r} has one document; a reranker is scored on the order it "
            "gives each query's documents, so give every query two or more"
        )
    return pairs, [numbers[q] for q, _ in pairs]
