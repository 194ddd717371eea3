"""Quantize: fp32 ONNX -> the precision the profile asks for (onnxruntime's quantization tools)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..config import Profile, Quantization
from ..errors import StageError
from . import digests
from .export import quiet


class QuantizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(description="fp32 (copy), fp16, or dynamic-int8.")
    quantization: Quantization | None = Field(default=None, description="int8 settings.")
    fp16_op_block_list: list[str] = Field(default_factory=list, description="Ops kept in fp32.")

    @classmethod
    def from_profile(cls, profile: Profile) -> QuantizeConfig:
        return cls(
            method=profile.method,
            quantization=profile.quantization,
            fp16_op_block_list=profile.fp16_op_block_list,
        )


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def _dynamic_int8(q: Quantization, src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=q.op_types,
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
        weight_type=QuantType.QInt8 if q.weight_type == "int8" else QuantType.QUInt8,
        nodes_to_exclude=q.nodes_to_exclude,
    )


def _fp16(block_list: list[str], src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    # keep_io_types: the runtime feeds and reads fp32, whatever the weights are.
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *block_list]
    )
    onnx.save(converted, str(dst))


def run(config: QuantizeConfig, model: Path, out: Path) -> dict[str, Any]:
    """Write ``out/model.onnx`` in the profile's precision; return the stage record."""
    dst = out / "model.onnx"
    try:
        with quiet():
            if config.method == "fp32":
                shutil.copyfile(model, dst)
            elif config.method == "fp16":
                _fp16(config.fp16_op_block_list, model, dst)
            elif config.method == "dynamic-int8" and config.quantization is not None:
                _dynamic_int8(config.quantization, model, dst)
            else:
                raise StageError(f"quantization method '{config.method}' needs its settings")
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"quantization ({config.method}) failed: {exc}") from exc
    return {
        "outputs": digests(out),
        "size_bytes": dst.stat().st_size,
        "op_counts": op_counts(dst),
    }
