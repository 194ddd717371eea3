"""How a build shows its long loops (edgepipe.progress): a bar with counts and time left in a terminal,
a line now and then when stderr is a file or a pipe (a CI log)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from rich.console import Console

# A log line at most this often per loop (EDGEPIPE_PROGRESS_SECONDS): a CI log stays readable.
LOG_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class LogReporter:
    """``label: done/total (p%), elapsed, about T left`` every ``every`` seconds, and when done."""

    def __init__(self, stream: TextIO, every: float) -> None:
        self.stream, self.every = stream, every
        self.started: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def start(self, label: str, total: int) -> None:
        self.started[label] = self.last[label] = time.perf_counter()

    def update(self, label: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - self.last[label] < self.every and done < total:
            return
        self.last[label] = now
        elapsed = now - self.started[label]
        left = f", about {_duration(elapsed / done * (total - done))} left" if 0 < done < total else ""
        self.stream.write(f"  {label}: {done}/{total} ({100 * done // total}%), {_duration(elapsed)}{left}\n")
        self.stream.flush()

    def finish(self, label: str) -> None:
        self.started.pop(label, None)
        self.last.pop(label, None)


class BarReporter:
    """A rich progress bar per loop, gone when the loop ends (the stage's ✓ line follows)."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            "  [dim]{task.description}[/dim]",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            "[dim]left[/dim]",
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.tasks: dict[str, Any] = {}

    def start(self, label: str, total: int) -> None:
        if not self.tasks:
            self.progress.start()
        self.tasks[label] = self.progress.add_task(label, total=total)

    def update(self, label: str, done: int, total: int) -> None:
        self.progress.update(self.tasks[label], completed=done)

    def finish(self, label: str) -> None:
        self.progress.remove_task(self.tasks.pop(label))
        if not self.tasks:
            self.progress.stop()


def reporter(stream: TextIO | None = None) -> BarReporter | LogReporter:
    """For ``stream`` (stderr now: stages silence sys.stderr while tools run, the reporter keeps this one)."""
    stream = stream or sys.stderr
    if stream.isatty():
        return BarReporter(Console(file=stream, highlight=False))
    every = float(os.environ.get("EDGEPIPE_PROGRESS_SECONDS", LOG_EVERY_S))
    return LogReporter(stream, every)
