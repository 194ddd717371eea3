"""Export: Hugging Face model directory -> fp32 ONNX (optimum-onnx), tokenizer alongside."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..catalog import families
from ..errors import StageError
from ..graph import decoder_graph, external, moe, tied
from . import digests, moe_export

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    # Decoders: the chat template (transformers >= 4.43 saves it apart) and the stop tokens.
    "chat_template.jinja",
    "generation_config.json",
)


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(description="optimum-onnx export task.")
    opset: int | None = Field(default=None, description="ONNX opset; None lets optimum choose.")
    trust_remote_code: bool = Field(default=False, description="Run the model's own code.")
    dedupe_tied: bool = Field(
        default=False,
        description="Store a tied embedding table once (the lm_head reads it transposed).",
    )
    fuse_attention: bool = Field(
        default=False,
        description="Decoders: rewrite each layer's attention to one GroupQueryAttention node "
        "(decoder_graph.optimize); models it cannot take are left as exported.",
    )
    routed_experts: bool = Field(
        default=True,
        description="Mixture-of-experts decoders: each block one MoE node computing a token's top-k experts "
        "(stages/moe_export.py); False exports every expert on every token (the dense baseline).",
    )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' warnings and chatter; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("optimum", "transformers", "torch", "onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def max_length(model_dir: Path) -> int:
    """Tokens the reference model reads: sentence-transformers' max_seq_length, else the config's."""
    st_config = model_dir / "sentence_bert_config.json"
    if st_config.is_file():
        value = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            return value
    config = json.loads((model_dir / "config.json").read_text())
    limits = [families.max_positions(config)]
    tok_config = model_dir / "tokenizer_config.json"
    if tok_config.is_file():
        value = json.loads(tok_config.read_text()).get("model_max_length")
        if isinstance(value, int) and value > 0:
            limits.append(value)
    return int(min(limits))


def fp32_bytes(model_dir: Path) -> int:
    """About the bytes of the model's weights in float32 (what the export holds)."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    stored = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return stored * (2 if dtype in ("bfloat16", "float16") else 1)


def run(config: ExportConfig, model_dir: Path, out: Path) -> dict[str, Any]:
    """Write ``out/model.onnx`` and the tokenizer files; return the stage record."""
    from optimum.exporters.onnx import main_export

    raw = out / "optimum"
    try:
        with quiet(), moe_export.registered(config.routed_experts):
            main_export(
                str(model_dir),
                str(raw),
                task=config.task,
                opset=config.opset,
                device="cpu",
                do_validation=False,
                trust_remote_code=config.trust_remote_code,
                # optimum's post-processing (its own tied-weights dedupe, done here by tied.py)
                # serializes the whole model and fails over 2 GB: "Failed to serialize proto"
                # on the Llama-3.2-1B shape (4.9 GB with the table stored once).
                no_post_process=fp32_bytes(model_dir) > external.threshold(),
            )
    except Exception as exc:  # optimum raises bare Exceptions for unsupported models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(f"export of {model_dir} failed: {first}") from exc
    onnx_files = sorted(raw.glob("*.onnx"))
    if len(onnx_files) != 1:
        raise StageError(f"export of {model_dir} wrote {len(onnx_files)} ONNX files, expected 1")
    (out / "tokenizer").mkdir()
    for name in TOKENIZER_FILES:
        src = raw / name if (raw / name).is_file() else model_dir / name
        if src.is_file():
            shutil.copyfile(src, out / "tokenizer" / name)
    record = _rewrite(config, model_dir, onnx_files[0], out / "model.onnx")
    shutil.rmtree(raw)
    return {"outputs": digests(out), "max_length": max_length(model_dir), **record}


def _rewrite(config: ExportConfig, model_dir: Path, exported: Path, dst: Path) -> dict[str, Any]:
    """``dst``: the export with the tied table stored once and the attention fused, as asked.

    The model is read once, its external data (a model over 2 GB) mapped rather than loaded, and
    written once: whole, or, when optimum wrote external data or the model is over the threshold,
    with its tensors in ``model.onnx.data`` (graph/external.py).
    """
    big = any(p.suffix in (".onnx_data", ".data") for p in exported.parent.iterdir())
    if not (config.dedupe_tied or config.fuse_attention or big):
        shutil.move(str(exported), dst)
        return {}
    before = sum(p.stat().st_size for p in exported.parent.glob(f"{exported.name}*"))
    model = external.load(exported)
    record: dict[str, Any] = {}
    dropped = tied.dedupe_model(model) if config.dedupe_tied else 0
    after_dedupe = external.written_bytes(model)
    graph: dict[str, Any] = {}
    if config.fuse_attention:
        hf_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        graph = decoder_graph.optimize_model(model, hf_config)
    # An export over 2 GB stays external even where the rewrites brought it under (Qwen2.5-0.5B:
    # 2.5 GB as optimum writes it, 1.98 GB with the table stored once): later stages then map its
    # weights instead of parsing, copying and serializing a whole 2 GB message (which measured a
    # 11.7 GB peak in the sensitivity stage).
    external.save(model, dst, keep_external=big)
    if config.dedupe_tied:
        record["tied"] = {
            "initializers_dropped": dropped,
            "size_bytes_before": before,
            "size_bytes_after": after_dedupe,
        }
    if config.fuse_attention:
        record["graph"] = {k: v for k, v in graph.items() if k != "op_counts"}
    if moe.nodes(model.graph):
        record["experts"] = {"routed": True, "moe_nodes": len(moe.nodes(model.graph)), **moe.parameters(model)}
    if external.data_file(dst).exists():
        record["external_data"] = external.data_file(dst).name
    return record
