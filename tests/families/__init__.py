"""Tiny random models of every registry family, one module per group of families.

Each group module defines ``TINY: dict[str, Callable[[Path], Path]]``: model_type -> a function that
saves a tiny random model of that family (config.json copying the real checkpoint's fields, scaled
down; a tokenizer trained in code) into the given directory and returns it. A key
``model_type@variant`` is one more tiny model of that family (Llama 3.2 beside the seeds' Llama).
tests/test_families.py checks that every entry of edgepipe.catalog.families.FAMILIES has one, and builds
each.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import classic, encoders, modern, moe, norms, seeds

TINY: dict[str, Callable[[Path], Path]] = {
    **seeds.TINY,
    **modern.TINY,
    **norms.TINY,
    **encoders.TINY,
    **classic.TINY,
    **moe.TINY,
}
