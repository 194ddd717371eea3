"""Sensitivity for decoders: which weight MatMuls to keep in 8 bits, best value per byte first.

Each MatMul's 4-bit codes (GPTQ or round-to-nearest, as the profile quantizes) are swapped in alone
and the mean KL(fp32 || swapped) measured on the first calibration texts (graph.damage: one
session for all of them); the ranking divides that damage by the bytes 8 bits add, so the
build's bisection over "the first k kept 8-bit" buys the most accuracy per megabyte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..catalog.config import WeightOnly
from ..graph import damage, external, gptq, nbits, weight_only
from . import digests
from .export import quiet
from .quantize import CalibrationData, decoder_calibration

# Bits per weight of a block of `block` codes: the codes, a float32 scale and a 4/8-bit zero point.
_BITS = {4: lambda block: 4 + 32 / block + 4 / block, 8: lambda block: 8 + 32 / block + 8 / block}


class DecoderSensitivityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    weight_only: WeightOnly = Field(description="The int4 settings each MatMul is quantized with.")
    calibration_digest: str = Field(description="sha256 of the calibration texts.")
    probe_texts: int = Field(gt=0, description="Calibration texts the damage is measured on.")
    probe_tokens: int = Field(default=96, gt=1, description="Tokens per probe text at most.")


def run(config: DecoderSensitivityConfig, fp32_model: Path, calibration: CalibrationData, out: Path) -> dict[str, Any]:
    """Write ``out/ranking.json``: every weight MatMul, its damage alone and the bytes 8 bits add."""
    settings = config.weight_only
    model = external.load(fp32_model)  # a model over 2 GB: its weights mapped, not loaded
    weight_only.gemm_to_matmul(model.graph)
    feeds = decoder_calibration(calibration, fp32_model)
    if settings.algorithm == "gptq":
        codes = weight_only.gptq_codes(settings, fp32_model, model, feeds, 4, config.calibration_digest)
    else:
        codes = _rtn_codes(model, settings.block_size)
    probe = CalibrationData(calibration.texts[: config.probe_texts], calibration.tokenizer, config.probe_tokens)
    with quiet():
        ranked = damage.rank(model, codes, decoder_calibration(probe, fp32_model)())
    inits = {t.name: t for t in model.graph.initializer}
    weights = {n.name: inits[n.input[1]] for n in nbits.weight_matmuls(model.graph)}
    block = settings.block_size
    int4_bytes = 0
    for entry in ranked:
        k, n = weights[entry["node"]].dims
        extra = k * n * (_BITS[8](block) - _BITS[4](block)) / 8
        int4_bytes += int(k * n * _BITS[4](block) / 8)
        entry["extra_bytes"] = int(extra)
        entry["kl_per_mb"] = round(entry["mean_kl"] / (extra / 1e6), 8)
    ranked.sort(key=lambda r: (-r["kl_per_mb"], r["node"]))
    (out / "ranking.json").write_text(json.dumps(ranked, indent=2))
    return {
        "outputs": digests(out),
        "nodes": len(ranked),
        "int4_bytes": int4_bytes,
        "worst": ranked[:3],
    }


def within(ranked: list[dict[str, Any]], int4_bytes: int, share: float) -> list[str]:
    """MatMuls in ranking order whose 8 bits together add at most ``share`` of ``int4_bytes``:
    one that no longer fits is passed over for smaller ones further down (a greedy knapsack)."""
    kept, spent = [], 0
    for entry in ranked:
        if spent + entry["extra_bytes"] <= share * int4_bytes:
            kept.append(entry["node"])
            spent += entry["extra_bytes"]
    return kept


def _rtn_codes(model: Any, block: int) -> nbits.Codes:
    inits = {t.name: t for t in model.graph.initializer}
    return {
        (n.input[1], 4): gptq.rtn(external.array(inits[n.input[1]]), 4, block)
        for n in nbits.weight_matmuls(model.graph)
    }
