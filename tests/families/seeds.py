"""The families edgepipe built before the registry: tests/decoders.py's decoders and the tiny BERT."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from tests.conftest import make_tiny_bert
from tests.decoders import make_tiny_decoder

TINY: dict[str, Callable[[Path], Path]] = {
    "bert": make_tiny_bert,
    **{kind: partial(make_tiny_decoder, kind) for kind in ("llama", "mistral", "qwen2", "phi3", "gpt2")},
}
