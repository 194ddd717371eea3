"""Quantize: fp32 ONNX -> the precision the profile asks for (onnxruntime's quantization tools)."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..cache import texts_digest
from ..catalog.config import Calibration, Profile, Quantization, WeightOnly
from ..errors import StageError
from ..graph import external, kv_cache, nbits, weight_only
from ..graph.smooth import smooth
from . import digests
from .export import quiet

# int8 for decoders: 8-bit weight-only MatMulNBits, like int4 but 8 bits, the embedding table 8-bit
# and shared with a tied lm_head. quantize_dynamic cannot quantize an lm_head that reads the tied
# table through a Transpose, so it would leave the largest MatMul in fp32.
DECODER_INT8 = WeightOnly(block_size=32, accuracy_level=4, symmetric=True, embedding_bits=8)


class QuantizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(description="fp32 (copy), fp16, dynamic-int8 or static-int8.")
    quantization: Quantization | None = Field(default=None, description="int8 settings.")
    fp16_op_block_list: list[str] = Field(default_factory=list, description="Ops kept in fp32.")
    calibration_digest: str | None = Field(default=None, description="static-int8: sha256 of the calibration texts.")
    weight_only: WeightOnly | None = Field(default=None, description="int4 settings.")
    task_kind: str = Field(description="embedding or generation.")
    kv_cache: str = Field(default="float32", description="The KV cache's element type (decoders).")

    @classmethod
    def from_profile(
        cls,
        profile: Profile,
        exclude: list[str] | None = None,
        calibration_digest: str | None = None,
        *,
        task_kind: str,
    ) -> QuantizeConfig:
        q, w = profile.quantization, profile.weight_only
        if q is not None and exclude:
            q = q.model_copy(update={"nodes_to_exclude": [*q.nodes_to_exclude, *exclude]})
        if w is not None and exclude:  # weight-only: the sensitive MatMuls stay 8-bit, not float
            w = w.model_copy(update={"int8_nodes": [*w.int8_nodes, *exclude]})
        return cls(
            method=profile.method,
            quantization=q,
            fp16_op_block_list=profile.fp16_op_block_list,
            calibration_digest=calibration_digest if uses_calibration(profile) else None,
            weight_only=w,
            task_kind=task_kind,
            kv_cache=profile.kv_cache,
        )


def uses_calibration(profile: Profile) -> bool:
    q, w = profile.quantization, profile.weight_only
    return (
        profile.method == "static-int8"
        or (q is not None and q.smooth_alpha is not None)
        or (profile.method == "int4" and w is not None and w.algorithm == "gptq")
        or (profile.kv_cache != "float32" and "generation" in profile.task_kinds)
    )


@dataclass(frozen=True)
class CalibrationData:
    """Texts to run through the fp32 model to find activation ranges, and how to tokenize them."""

    texts: list[str]
    tokenizer: Path
    max_length: int

    @property
    def digest(self) -> str:
        """sha256 of the texts: what a stage calibrated on them puts in its cache key."""
        return texts_digest(self.texts)


def run_profile(
    stage: Any,
    profile: Profile,
    keep: list[str] | None,
    label: str,
    kind: str,
    fp32_model: Path,
    digests: dict[str, str],
    calibration: CalibrationData,
) -> tuple[Path, dict[str, Any]]:
    """The quantize stage of ``profile`` (``keep`` nodes kept at higher precision), through the
    build's stage runner: its model file and record."""
    config = QuantizeConfig.from_profile(profile, keep, calibration.digest, task_kind=kind)
    return stage.quantize(
        label,
        profile.method,
        config,
        {"fp32": digests["fp32"], "tokenizer": digests["tokenizer"]},
        lambda d: run(config, fp32_model, d, calibration),
    )


def decoder_calibration(calibration: CalibrationData, model: Path) -> weight_only.Feeds:
    """The calibration texts as a decoder's feeds (each text one pass, its cache empty)."""
    import onnx
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(calibration.tokenizer))
    ids = [tokenizer.encode(t).ids[: calibration.max_length] for t in calibration.texts]
    ids = [i for i in ids if i]
    inputs = list(onnx.load(str(model), load_external_data=False).graph.input)
    return lambda: nbits.decoder_feeds(ids, inputs)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def weight_matmuls(path: Path) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant weight: what int8 quantizes."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def _dynamic_int8(q: Quantization, src: Path, dst: Path, only: list[str] | None = None) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=q.op_types,
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
        weight_type=QuantType.QInt8 if q.weight_type == "int8" else QuantType.QUInt8,
        nodes_to_exclude=q.nodes_to_exclude,
        nodes_to_quantize=only,
    )


def _static_int8(q: Quantization, src: Path, dst: Path, calib: CalibrationData) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from tokenizers import Tokenizer

    settings = q.calibration or Calibration()
    tokenizer = Tokenizer.from_file(str(calib.tokenizer))
    tokenizer.enable_truncation(max_length=calib.max_length)
    inputs = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.texts = iter(calib.texts[: settings.samples])

        def get_next(self) -> dict[str, np.ndarray] | None:
            text = next(self.texts, None)
            if text is None:
                return None
            ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            feeds["token_type_ids"] = np.zeros_like(ids)
            return {name: feeds[name] for name in inputs}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    quantize_static(
        src,
        dst,
        Reader(),
        # QDQ: the format TensorRT and the CPU provider both read.
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=q.op_types,
        per_channel=q.per_channel,
        reduce_range=q.reduce_range,
        activation_type=types[q.activation_type],
        weight_type=types[q.weight_type],
        nodes_to_exclude=q.nodes_to_exclude,
        calibrate_method=methods[settings.method],
    )


def _fp16(block_list: list[str], src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = external.load(src)
    external.inline(model)  # the converter reads every tensor's values
    # keep_io_types: the runtime feeds and reads fp32, whatever the weights are.
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, *block_list])
    external.save(converted, dst)


def prepared(q: Quantization, model: Path, tmp: Path, calibration: CalibrationData | None) -> Path:
    """The fp32 model int8 starts from: rescaled first when the profile asks for it."""
    if q.smooth_alpha is None:
        return model
    if calibration is None:
        raise StageError("smooth_alpha needs calibration texts")
    dst = tmp / "smoothed.onnx"
    smooth(model, dst, q.smooth_alpha, calibration.texts, calibration.tokenizer, calibration.max_length)
    return dst


def run(config: QuantizeConfig, model: Path, out: Path, calibration: CalibrationData | None = None) -> dict[str, Any]:
    """Write ``out/model.onnx`` in the profile's precision; return the stage record."""
    dst = out / "model.onnx"
    extra: dict[str, Any] = {}
    try:
        with quiet():
            if config.method == "fp32":
                external.copy(model, dst)
            elif config.method == "fp16":
                _fp16(config.fp16_op_block_list, model, dst)
            elif config.method == "int4" and config.weight_only is not None:
                feeds = decoder_calibration(calibration, model) if calibration else None
                extra = weight_only.quantize(config.weight_only, model, dst, 4, feeds, config.calibration_digest)
            elif config.method == "dynamic-int8" and config.task_kind == "generation":
                settings = config.weight_only or DECODER_INT8
                extra = weight_only.quantize(settings, model, dst, bits=8)
            elif config.method == "dynamic-int8" and config.quantization is not None:
                with tempfile.TemporaryDirectory(prefix="edgepipe-q-") as tmp:
                    src = prepared(config.quantization, model, Path(tmp), calibration)
                    _dynamic_int8(config.quantization, src, dst)
            elif config.method == "static-int8" and config.quantization and calibration:
                _static_int8(config.quantization, model, dst, calibration)
            else:
                raise StageError(f"quantization method '{config.method}' needs its settings")
            if config.kv_cache != kv_cache.FLOAT32 and config.task_kind == "generation":
                feeds = decoder_calibration(calibration, dst) if calibration else None
                extra["kv_cache"] = kv_cache.apply(dst, config.kv_cache, feeds)
            if config.task_kind == "generation":
                external.map_weights(dst)  # mapped by the session, not parsed into it
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"quantization ({config.method}) failed: {exc}") from exc
    return {
        "outputs": digests(out),
        "size_bytes": external.size(dst),
        "op_counts": op_counts(dst),
        **extra,
    }
