"""The loop both bench workers run: one JSON command per stdin line, one JSON reply per line.

Standard library only: llamacpp_worker.py runs it in llama-cpp-python's venv, without edgepipe.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def rss() -> dict[str, Any]:
    """This process's peak (VmHWM) and current (VmRSS) resident memory, in MB (Linux)."""
    found = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = round(int(value.split()[0]) / 1e3, 1)
    return {"peak_rss_mb": found.get("VmHWM"), "rss_mb": found.get("VmRSS")}


def serve(commands: dict[str, Callable[..., dict[str, Any]]]) -> None:
    """Answer ``{"op": name, **kwargs}`` lines with ``commands[name](**kwargs)`` until stdin ends."""
    commands = {**commands, "rss": rss}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = commands[request.pop("op")](**request)
        except Exception as exc:  # reported to the driver, which raises it there
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)
