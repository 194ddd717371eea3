"""Bench for decoders: greedy generation on the build host, the model beside the fp32 export.

Time to first token, prefill and decode tokens/s and peak memory, each model in a process of its
own (``edgepipe.bench.generation``) running the bundle's Generator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..bench.host import MEASURED_ON, run_isolated
from ..runtime.generator import GenerationConfig
from . import digests

MODULE = "edgepipe.bench.generation"  # run in a process of its own, as the embedding bench is
SCHEMA = "edgepipe.bench-generation/1"
# A fixed English prompt: real words, so the prefill reads a realistic number of tokens.
PROMPT = (
    "The Raspberry Pi 5 is a small single-board computer with four Cortex-A76 cores. "
    "Running a language model on it locally means"
)


class GenerationBenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    result_schema: str = Field(default=SCHEMA, description="The result's schema version.")
    prompt: str = Field(default=PROMPT, description="The prompt every run starts from.")
    new_tokens: int = Field(default=64, gt=1, description="Greedy tokens generated per run.")
    runs: int = Field(default=5, gt=0, description="Timed runs per model (the median is kept).")
    warmup: int = Field(default=1, ge=0, description="Untimed runs per model first.")
    threads: int = Field(gt=0, description="The target's intra-op threads, capped at the host's.")
    target: dict[str, Any] = Field(description="The target's name and arch, to label the result.")
    host: dict[str, Any] = Field(description="The machine measured on.")


def run(
    config: GenerationBenchConfig,
    fp32_model: Path,
    model: Path,
    tokenizer: Path,
    runtime: GenerationConfig,
    out: Path,
) -> dict[str, Any]:
    """Measure ``model`` and the fp32 export one after the other; write ``out/bench.json``."""
    threads = min(config.threads, os.cpu_count() or 1)
    common = {
        "tokenizer": str(tokenizer),
        "runtime": runtime.to_json(),
        "prompt": config.prompt,
        "new_tokens": config.new_tokens,
        "runs": config.runs,
        "warmup": config.warmup,
        "threads": threads,
    }
    measured = {
        name: run_isolated({**common, "model": str(path)}, module=MODULE)
        for name, path in (("model", model), ("fp32", fp32_model))
    }
    m, f = measured["model"], measured["fp32"]
    result = {
        "schema": SCHEMA,
        "measured_on": MEASURED_ON,
        "target": config.target,
        "host": config.host,
        "threads": threads,
        "prompt_tokens": m["prompt_tokens"],
        "new_tokens": m["new_tokens"],
        "model": {k: v for k, v in m.items() if k != "token_ids"},
        "fp32": {k: v for k, v in f.items() if k != "token_ids"},
        "decode_speedup_vs_fp32": round(m["decode_tokens_per_s"] / f["decode_tokens_per_s"], 2),
        "greedy_tokens_equal_fp32": m["token_ids"] == f["token_ids"],
    }
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    return {"outputs": digests(out), **result}
