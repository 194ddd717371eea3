"""edgepipe side of the context sweep (context_sweep.py): the bundle's runtime alone in a process,
so that its peak RSS is the model's, as on a device. One JSON command per line on stdin.

Commands: load {model, tokenizer, runtime, threads, max_context, plain}; generate {ids, n} (greedy,
no EOS: exactly n tokens); rss {} (this process's peak and current resident MB). ``plain`` turns
the in-place cache off: the loop that feeds ``present.*`` back as ``past_key_values.*``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from jsonl_worker import serve  # beside this script

from edgepipe.runtime.generator import GenerationConfig, Generator

generator: Generator | None = None


def load(
    model: str,
    tokenizer: str,
    runtime: dict[str, Any],
    threads: int,
    max_context: int,
    plain: bool = False,
) -> dict[str, Any]:
    global generator
    config = dataclasses.replace(GenerationConfig.from_json(runtime), eos_token_ids=())
    generator = Generator(Path(model), Path(tokenizer), config, threads=threads, max_context=max_context)
    if plain:
        generator.cache = None
    return {"in_place": generator.cache is not None, "prefill_chunk": generator.prefill_chunk}


def generate(ids: list[int], n: int) -> dict[str, Any]:
    assert generator is not None
    out = generator.generate(ids, max_new_tokens=n)
    return {
        "ttft_ms": out.timings["time_to_first_token_ms"],
        "decode_tps": out.timings["decode_tokens_per_s"],
        "tokens": out.token_ids,
    }


if __name__ == "__main__":
    serve({"load": load, "generate": generate})
