"""``python <bundle> classify|rerank``, and the body of ``serve``'s POST /rerank."""

from __future__ import annotations

import argparse
import json
import sys
from http import HTTPStatus
from pathlib import Path
from typing import Any

from .cli_input import InputError, _require_task, _texts
from .http.json_body import RequestError
from .tasks import Task


def add_parsers(sub: Any) -> None:
    classify = sub.add_parser("classify", help='print one JSON line {"label", "score", "scores"} per text')
    classify.add_argument("texts", nargs="*", metavar="TEXT", help="texts; '-' reads lines from stdin")
    classify.add_argument("--file", help="read texts from a file, one per line")
    classify.add_argument("--threads", type=int, help="intra-op threads (default: target's)")
    rerank = sub.add_parser(
        "rerank",
        help='score documents against a query: one JSON line {"index", "score", "document"} per '
        "document, the most relevant first",
    )
    rerank.add_argument("query", metavar="QUERY", help="the query")
    rerank.add_argument("texts", nargs="*", metavar="DOC", help="documents; '-' reads lines from stdin")
    rerank.add_argument("--file", help="read documents from a file, one per line")
    rerank.add_argument("--threads", type=int, help="intra-op threads (default: target's)")


def classify(root: Path, args: argparse.Namespace) -> int:
    from .scorer import Scorer

    _require_task(root, Task.CLASSIFICATION, "classify")
    texts = _texts(args)
    scorer = Scorer.from_bundle(root, threads=args.threads)
    for text, record in zip(texts, scorer.classify(texts), strict=True):
        if scorer.truncated(text):
            record["truncated"] = True
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


def rerank(root: Path, args: argparse.Namespace) -> int:
    from .scorer import Scorer

    _require_task(root, Task.RERANKING, "rerank")
    if "\x00" in args.query:
        raise InputError("the query contains a NUL character")
    documents = _texts(args)
    scorer = Scorer.from_bundle(root, threads=args.threads)
    for result in scorer.rerank(args.query, documents):
        record = {**result, "document": documents[result["index"]]}
        sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    return 0


def rerank_request(payload: object, max_texts: int) -> tuple[str, list[str]]:
    """The query and documents of a /rerank body, or RequestError saying what is wrong."""
    bad = HTTPStatus.BAD_REQUEST
    if (
        not isinstance(payload, dict)
        or set(payload) != {"query", "documents"}
        or not isinstance(payload["query"], str)
        or not isinstance(payload["documents"], list)
    ):
        raise RequestError(bad, 'body must be a JSON object {"query": "...", "documents": ["...", ...]}')
    query, documents = payload["query"], payload["documents"]
    if not documents:
        raise RequestError(bad, '"documents" is empty')
    if len(documents) > max_texts:
        raise RequestError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"{len(documents)} documents in one request; at most {max_texts}",
        )
    for number, document in enumerate(documents):
        if not isinstance(document, str):
            raise RequestError(bad, f"document {number} is {type(document).__name__}, not a string")
    if "\x00" in query or any("\x00" in d for d in documents):
        raise RequestError(bad, "the query or a document contains a NUL character")
    return query, documents
