"""Typed targets and profiles, loaded from YAML with one-line errors naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import ConfigError
from ..runtime.tasks import Task

# The accuracy metrics that make sense for each task kind.
KIND_METRICS: dict[Task, tuple[str, ...]] = {
    Task.EMBEDDING: ("min_cosine",),
    Task.GENERATION: ("next_token_agreement",),
    Task.CLASSIFICATION: ("label_agreement",),
    Task.RERANKING: ("rank_correlation",),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Platform(Strict):
    os: Literal["linux", "macos", "windows"] = Field(description="Operating system of the device.")
    arch: Literal["x86_64", "aarch64"] = Field(description="CPU architecture, as `uname -m` says.")
    wheel_platform: str = Field(description="pip platform tag of the device's wheels, e.g. manylinux_2_28_aarch64.")
    python: str = Field(description="Python version on the device, e.g. '3.11'.")


class Cpu(Strict):
    model: str = Field(description="CPU core or product name.")
    cores: int = Field(gt=0, description="Physical cores available to inference.")
    isa: list[str] = Field(description="Instruction-set features that matter to int8/fp16 kernels.")


class Runtime(Strict):
    onnxruntime: str = Field(
        description="onnxruntime versions the device can run (PEP 440 specifier, e.g. '>=1.20,<2')."
    )
    execution_providers: list[str] = Field(
        min_length=1, description="onnxruntime execution providers, in order of preference."
    )
    intra_op_threads: int = Field(gt=0, description="Threads for one inference.")
    inter_op_threads: int = Field(default=1, gt=0, description="Threads across graph branches.")

    @field_validator("onnxruntime")
    @classmethod
    def _specifier(cls, value: str) -> str:
        from packaging.specifiers import InvalidSpecifier, SpecifierSet

        try:
            SpecifierSet(value)
        except InvalidSpecifier as exc:
            raise ValueError(f"not a version range: {value!r}") from exc
        return value


class Budgets(Strict):
    model_size_mb: float = Field(gt=0, description="Largest model file the device should carry.")
    ram_mb: float = Field(gt=0, description="Memory the model may use on the device.")
    latency_ms: float = Field(
        gt=0, description="p95 latency goal on the device (batch 1, 128 tokens); `edgepipe check`."
    )
    generation_model_size_mb: float | None = Field(
        default=None,
        gt=0,
        description="Largest text-generation model file the device should carry; none: no limit.",
    )
    decode_tokens_per_s: float | None = Field(
        default=None,
        gt=0,
        description="Slowest text-generation decode the device may show (`edgepipe check`).",
    )


class LicencePolicy(Strict):
    """Which model licences a product may ship; ids are SPDX ids or expressions' ids, LicenseRef ids, or
    Hugging Face licence ids (``llama3.2``), all compared after trust/licence.py names them."""

    allow: list[str] | None = Field(
        default=None, description="Only these (and accepted ones) may ship; absent: every licence not denied."
    )
    deny: list[str] = Field(default_factory=list, description="Never shipped, even when accepted.")
    require_acceptance: list[str] = Field(
        default_factory=list, description="Shipped only with --accept-license ID (licences with use policies)."
    )


class Target(Strict):
    """One device: where the bundle runs and what it may cost there."""

    name: str = Field(description="Short name used on the command line.")
    description: str = Field(description="One line for `edgepipe targets`.")
    platform: Platform
    cpu: Cpu
    memory_mb: int = Field(gt=0, description="Memory of the smallest supported device variant.")
    accelerator: str | None = Field(default=None, description="GPU/NPU, if any.")
    runtime: Runtime
    default_profile: str = Field(
        description="Profile used for embedding, classification and reranking models when --profile is not given."
    )
    default_generation_profile: str | None = Field(
        default=None,
        description="Profile used for text-generation models when --profile is not given.",
    )
    budgets: Budgets
    license_policy: LicencePolicy | None = Field(
        default=None, description="The licences a model built for this device may carry (--license-policy overrides)."
    )

    def profile_for(self, task_kind: Task) -> str:
        """The default profile's name for ``task_kind``; ConfigError when the target names none."""
        if task_kind == "generation":
            if self.default_generation_profile is None:
                raise ConfigError(
                    f"target '{self.name}' names no default profile for text-generation models "
                    "(default_generation_profile); pass --profile (see `edgepipe profiles`)"
                )
            return self.default_generation_profile
        return self.default_profile


class KeepFloat(Strict):
    """Sensitivity-guided mixed precision: keep the most damaging nodes in float until the bar holds."""

    max_nodes: int = Field(gt=0, description="At most this many nodes stay float.")
    probe_texts: int = Field(default=8, gt=0, description="Worst-scoring texts used to rank the nodes' damage.")


class Keep8Bit(Strict):
    """Decoder mixed precision: weight MatMuls kept 8-bit, ranked by a sensitivity stage."""

    max_nodes: int = Field(gt=0, description="At most this many MatMuls stay 8-bit.")
    probe_texts: int = Field(default=3, gt=0, description="Calibration texts each MatMul's damage is measured on.")
    extra_size: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Keep the MatMuls worth most per byte 8-bit from the first attempt on, until "
        "they add this share of the 4-bit MatMuls' bytes; none: only when the bar is missed.",
    )


class Calibration(Strict):
    method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="How activation ranges are chosen from the calibration run."
    )
    samples: int = Field(default=64, gt=0, description="Calibration texts used at most.")


class Quantization(Strict):
    op_types: list[str] = Field(
        default_factory=lambda: ["MatMul"], description="ONNX op types whose weights are quantized."
    )
    per_channel: bool = Field(default=True, description="One scale per output channel.")
    reduce_range: bool = Field(default=False, description="7-bit weights: avoids u8s8 saturation on AVX2 without VNNI.")
    weight_type: Literal["int8", "uint8"] = Field(default="int8", description="Weight integer type.")
    nodes_to_exclude: list[str] = Field(
        default_factory=list, description="Node names kept in float regardless of op type."
    )
    activation_type: Literal["int8", "uint8"] = Field(
        default="uint8",
        description="static-int8 only: activation integer type (s8s8 for TensorRT).",
    )
    calibration: Calibration | None = Field(
        default=None, description="static-int8 only: how activation ranges are calibrated."
    )
    smooth_alpha: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="dynamic-int8 only: SmoothQuant-style rescale migrating activation outliers "
        "into the weights before quantizing (alpha = share of the range moved).",
    )
    keep_float: KeepFloat | None = Field(default=None, description="dynamic-int8 only: mixed precision below the bar.")


class WeightOnly(Strict):
    """int4: blockwise weight-only quantization (onnxruntime MatMulNBits / GatherBlockQuantized)."""

    block_size: int = Field(default=32, ge=16, description="Weights per scale along the input dimension (power of 2).")
    accuracy_level: Literal[0, 1, 2, 3, 4] = Field(
        default=4,
        description="MatMulNBits compute type: 0 default, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations.",
    )
    symmetric: bool = Field(default=True, description="No zero points: one scale per block.")
    algorithm: Literal["rtn", "gptq"] = Field(
        default="rtn",
        description="rtn: onnxruntime's round-to-nearest; gptq: GPTQ on the calibration texts "
        "(zero points, each block's clip searched), which needs symmetric: false.",
    )
    embedding_bits: Literal[0, 4, 8] = Field(
        default=4,
        description="Bits of the token embedding table (GatherBlockQuantized); 0 keeps it float. "
        "A tied lm_head shares the table, so it gets these bits too.",
    )
    embedding_block_size: int | None = Field(
        default=None,
        ge=16,
        description="Weights per scale of the embedding table (a power of 2 dividing the hidden "
        "size); default: block_size.",
    )
    keep_8bit: Keep8Bit | None = Field(
        default=None,
        description="Mixed precision: the most damaging weight MatMuls (ranked by a sensitivity "
        "stage) kept in 8 bits, at most max_nodes of them.",
    )
    int8_nodes: list[str] = Field(default_factory=list, description="Weight MatMuls quantized to 8 bits instead of 4.")

    @field_validator("block_size", "embedding_block_size")
    @classmethod
    def _power_of_two(cls, value: int | None) -> int | None:
        if value is not None and value & (value - 1):
            raise ValueError(f"block_size must be a power of 2, not {value}")
        return value

    @model_validator(mode="after")
    def _gptq_has_zero_points(self) -> WeightOnly:
        if self.algorithm == "gptq" and self.symmetric:
            raise ValueError("algorithm gptq stores zero points: set symmetric: false")
        return self


class Accuracy(Strict):
    metric: Literal["min_cosine", "next_token_agreement", "label_agreement", "rank_correlation"] = Field(
        default="min_cosine",
        description="min_cosine: worst-case cosine to the fp32 model over the texts "
        "(embeddings); next_token_agreement: share of positions whose top-1 next token matches "
        "fp32 (generation); label_agreement: share of texts given fp32's label "
        "(classification); rank_correlation: the worst query's Spearman correlation of the "
        "documents' scores with fp32's (reranking).",
    )
    min: float = Field(gt=0, le=1, description="The bar: the build fails below it.")
    max_kl: float | None = Field(
        default=None,
        gt=0,
        description="next_token_agreement and label_agreement: the largest mean KL(fp32 || model) "
        "in nats allowed (next tokens' or labels' probabilities).",
    )
    max_score_error: float | None = Field(
        default=None,
        gt=0,
        description="rank_correlation only: the largest difference of a relevance score (the "
        "model's raw logit) from fp32's allowed.",
    )
    max_perplexity_ratio: float | None = Field(
        default=None,
        ge=1,
        description="next_token_agreement only: the largest perplexity on the evaluation texts "
        "allowed, as a multiple of the fp32 model's.",
    )


class Profile(Strict):
    """One recipe: how the model is turned into what the target runs."""

    name: str = Field(description="Short name used on the command line.")
    description: str = Field(description="One line for `edgepipe profiles`.")
    method: Literal["fp32", "fp16", "dynamic-int8", "static-int8", "int4"] = Field(
        description="The quantization method."
    )
    task_kinds: list[Task] = Field(default=[Task.EMBEDDING], description="Task kinds the recipe applies to.")
    execution_providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="Providers the recipe needs; the target must offer one of them.",
    )
    quantization: Quantization | None = Field(
        default=None, description="Settings for quantizing methods; absent for fp32."
    )
    weight_only: WeightOnly | None = Field(
        default=None, description="int4 only: block size, accuracy level, embedding table bits."
    )
    fp16_op_block_list: list[str] = Field(
        default_factory=list,
        description="fp16 only: ops kept in fp32 because they overflow in fp16.",
    )
    kv_cache: Literal["float32", "int8"] = Field(
        default="float32",
        description="generation only: the KV cache's element type where the attention is "
        "onnxruntime's GroupQueryAttention (the export's rewrite); int8 (per-channel scales from "
        "the calibration texts) stores a quarter of the bytes, and a decode step reads a quarter.",
    )
    accuracy: Accuracy
    task_accuracy: dict[Task, Accuracy] = Field(
        default_factory=dict,
        description="A bar per task kind, for profiles of several kinds; overrides `accuracy`.",
    )
    fallbacks: list[str] = Field(
        default_factory=list, description="Profiles tried in order when this one misses its bar."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        for kind in self.task_kinds:
            metric = self.bar(kind).metric
            if metric not in KIND_METRICS[kind]:
                raise ValueError(
                    f"accuracy metric {metric} does not measure {kind} models; use "
                    f"{' or '.join(KIND_METRICS[kind])} (in task_accuracy.{kind} for a profile "
                    "of several kinds)"
                )
        if self.method == "int4" and self.weight_only is None:
            raise ValueError("method int4 needs its weight_only settings")
        if self.method == "int4" and self.task_kinds != ["generation"]:
            raise ValueError("method int4 is for generation models only (task_kinds: [generation])")
        if self.kv_cache != "float32" and "generation" not in self.task_kinds:
            raise ValueError("kv_cache is for generation models only (task_kinds: [generation])")
        return self

    def bar(self, task_kind: Task) -> Accuracy:
        """The accuracy bar for models of ``task_kind``."""
        return self.task_accuracy.get(task_kind, self.accuracy)


M = TypeVar("M", bound=BaseModel)


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_yaml_model(path: Path, model: type[M]) -> M:
    """Read ``path`` with ``yaml.safe_load`` and validate it as ``model``; ConfigError on any fault."""
    kind = model.__name__.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {kind} file: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: malformed YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {kind} file must be a YAML mapping of keys to values")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = _field_path(first["loc"])
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        elif first["type"] == "missing":
            message = "missing key"
        else:
            message = first["msg"]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{path}: {kind} field '{field}': {message}{more}") from exc


def check_fits(target: Target, profile: Profile, task: Task | str) -> None:
    """Refuse a profile that cannot run on the target or for the task, before any work starts."""
    kind = Task.parse(task)
    if kind not in profile.task_kinds:
        default = target.default_generation_profile if kind == "generation" else None
        hint = f"'{default}' (the target's default)" if default else "another"
        raise ConfigError(
            f"profile '{profile.name}' is for {', '.join(profile.task_kinds)} models, "
            f"not {kind} ({kind.manifest_name}); use {hint} with --profile (see `edgepipe profiles`)"
        )
    offered = set(target.runtime.execution_providers)
    if not offered.intersection(profile.execution_providers):
        raise ConfigError(
            f"profile '{profile.name}' needs {' or '.join(profile.execution_providers)}, which "
            f"target '{target.name}' does not offer ({', '.join(target.runtime.execution_providers)})"
        )
