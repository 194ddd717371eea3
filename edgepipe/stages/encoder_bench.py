"""Bench: host-measured latency of the model beside the fp32 export, interleaved in one run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..bench.host import MEASURED_ON, run_isolated
from ..runtime import encoder_bench
from ..runtime.embedder import EmbeddingConfig
from . import digests


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    result_schema: str = Field(default=encoder_bench.SCHEMA, description="The result's schema version.")
    batch_size: int = Field(default=1, gt=0, description="Texts per inference.")
    seq_len: int = Field(
        default=encoder_bench.DEFAULT_SEQ_LEN, gt=1, description="Tokens per text (capped at the max)."
    )
    runs: int = Field(default=30, gt=0, description="Timed runs per model.")
    warmup: int = Field(default=5, ge=0, description="Untimed runs per model first.")
    threads: int = Field(gt=0, description="The target's intra-op threads.")
    target: dict[str, Any] = Field(description="The target's name and arch, to label the result.")
    host: dict[str, Any] = Field(description="The machine measured on: a new host is a new measurement.")


def run(
    config: BenchConfig,
    fp32_model: Path,
    model: Path,
    tokenizer: Path,
    runtime: EmbeddingConfig,
    out: Path,
    task: str = "embedding",
) -> dict[str, Any]:
    """Time both models on the same ``batch x seq_len`` input; write ``out/bench.json``."""
    settings = encoder_bench.BenchSettings(
        batch_sizes=(config.batch_size,),
        seq_lens=(min(config.seq_len, runtime.max_length),),
        runs=config.runs,
        warmup=config.warmup,
    )
    models = {"model": ("model/model.onnx", model), "fp32": ("export/model.onnx", fp32_model)}
    request = encoder_bench.request(
        models,
        tokenizer,
        runtime,
        settings,
        measured_on=MEASURED_ON,
        target=config.target,
        task=task,
    )
    result = run_isolated(request)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    return {"outputs": digests(out), **result}
