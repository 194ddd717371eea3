"""``python -m edgepipe.bench.generation``: time greedy generation of one decoder in this process.

Reads a JSON request on stdin, writes the JSON result on stdout. It imports only the bundle's
runtime (onnxruntime, numpy, tokenizers), so its peak RSS is the model's process alone, as on the
device; the build runs one such process per model.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

KEYS = ("time_to_first_token_ms", "prefill_tokens_per_s", "decode_tokens_per_s")


def measure(request: dict[str, Any]) -> dict[str, Any]:
    from ..runtime.generator import GenerationConfig, Generator
    from ..runtime.timing import peak_rss_mb

    config = GenerationConfig.from_json(request["runtime"])
    # No EOS: every run generates exactly new_tokens, whatever the (possibly random) weights say.
    config = dataclasses.replace(config, eos_token_ids=())
    start = time.perf_counter()
    generator = Generator(
        Path(request["model"]),
        Path(request["tokenizer"]),
        config,
        threads=request["threads"],
        spin=False,
    )
    load_ms = (time.perf_counter() - start) * 1000
    ids = generator.encode(request["prompt"])
    # One token a step: the model against its fp32 baseline, not speculation's hit rate on the prompt.
    new = request["new_tokens"]
    for _ in range(request["warmup"]):
        generator.generate(ids, max_new_tokens=new, speculate=False)
    runs = [generator.generate(ids, max_new_tokens=new, speculate=False) for _ in range(request["runs"])]
    timings = {k: round(statistics.median(r.timings[k] for r in runs), 2) for k in KEYS}
    return {
        **timings,
        "prompt_tokens": len(ids),
        "new_tokens": runs[0].timings["new_tokens"],
        "runs": len(runs),
        "load_ms": round(load_ms, 1),
        "peak_rss_mb": peak_rss_mb(),
        "size_bytes": _size(Path(request["model"])),
        "token_ids": runs[0].token_ids,
    }


def _size(model: Path) -> int:
    """The model file and its external data (``<model>.data``, graph/external.py), if any."""
    data = model.with_name(model.name + ".data")
    return model.stat().st_size + (data.stat().st_size if data.is_file() else 0)


if __name__ == "__main__":
    json.dump(measure(json.load(sys.stdin)), sys.stdout)
