"""Progress of a stage's long loops, reported to whatever the CLI set up: library code never prints.

A stage wraps a loop in ``with progress.task("ranking MatMuls", total=len(nodes)) as advance:`` and
calls ``advance()`` once an item is done. The CLI installs a Reporter for the build with
``with progress.reporting(reporter):``; without one (tests, library use) a task costs a function call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol


class Reporter(Protocol):
    """What the CLI shows: a bar in a terminal, a line now and then in a log."""

    def start(self, label: str, total: int) -> None: ...

    def update(self, label: str, done: int, total: int) -> None: ...

    def finish(self, label: str) -> None: ...


_CURRENT: ContextVar[Reporter | None] = ContextVar("edgepipe_progress", default=None)


def _ignore(count: int = 1) -> None:
    return None


@contextmanager
def reporting(reporter: Reporter | None) -> Iterator[None]:
    """Tasks started inside report to ``reporter`` (None: to nobody)."""
    token = _CURRENT.set(reporter)
    try:
        yield
    finally:
        _CURRENT.reset(token)


@contextmanager
def task(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A loop of ``total`` items; the callable it yields counts ``n`` more done (default 1)."""
    reporter = _CURRENT.get()
    if reporter is None or total < 1:
        yield _ignore
        return
    done = 0

    def advance(count: int = 1) -> None:
        nonlocal done
        done = min(total, done + count)
        reporter.update(label, done, total)

    reporter.start(label, total)
    try:
        yield advance
    finally:
        reporter.finish(label)
