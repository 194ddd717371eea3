"""Mixture-of-experts blocks at export: routed (one com.microsoft MoE node) or dense (every expert).

optimum-onnx 0.1.0 knows none of mixtral, qwen2_moe, olmoe, granitemoe or phimoe, and exports
qwen3_moe and gpt_oss densely (its patches run every expert on every token). ``registered`` gives
optimum an export config for each (the attention as its dense peer exports it) whose patcher
replaces the family's sparse block with one function of the same maths:

- routed: router logits -> ``MoE`` (softmax, top-k, optional renormalisation, SwiGLU experts),
  so a token computes only its k experts; onnxruntime's CPU kernel needs gate/up interleaved in
  fc1 (graph/moe.py). The experts become [experts, out, in] initializers.
- dense: every expert on every token as 2-D MatMuls, weighted by the same routing: the baseline the
  routed build is measured against (int4 takes its MatMuls as it takes any).

The families differ only in how the router's weights are formed, all reduced to the MoE node's
softmax-top-k: Mixtral renormalises the top-k; Qwen2/3-MoE and OLMoE when ``norm_topk_prob``;
Granite-MoE and gpt-oss take the softmax of the top-k logits (= renormalised); PhiMoE's
sparsemixer is computed in the graph and fed as log-multipliers (its sum scales the output).
Qwen2-MoE's shared expert and its sigmoid gate stay ordinary MatMuls beside the node.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

MODEL_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "granitemoe", "phimoe", "gpt_oss")
TENSORS = ("fc1", "fc1_bias", "fc2", "fc2_bias")


@dataclass
class Experts:
    """One block's experts as the MoE node takes them."""

    fc1: torch.Tensor  # [E, 2I, H], gate/up rows interleaved
    fc1_bias: torch.Tensor  # [E, 2I]
    fc2: torch.Tensor  # [E, H, I]
    fc2_bias: torch.Tensor  # [E, H]
    k: int
    normalize: bool
    alpha: float = 1.0  # SwiGLU: gate * sigmoid(alpha * gate) * (up + beta), clamped at limit
    beta: float = 0.0
    limit: float | None = None


def _interleave(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    e, i, h = gate.shape
    return torch.stack([gate, up], dim=2).reshape(e, 2 * i, h)


def _routing(logits: torch.Tensor, k: int, normalize: bool) -> torch.Tensor:
    """[T, E] weights: the top-k softmax probabilities (renormalised), zero elsewhere."""
    probs = torch.softmax(logits.float(), dim=-1)
    top, idx = torch.topk(probs, k, dim=-1)
    if normalize:
        top = top / top.sum(dim=-1, keepdim=True)
    return torch.zeros_like(probs).scatter(1, idx, top).to(logits.dtype)


def _swiglu(h: torch.Tensor, alpha: float, beta: float, limit: float | None) -> torch.Tensor:
    gate, up = h[..., ::2], h[..., 1::2]
    if limit is not None:
        gate, up = gate.clamp(max=limit), up.clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + beta)


def _dense(x: Any, logits: Any, fc1: Any, b1: Any, fc2: Any, b2: Any, k: int, normalize: bool,
           alpha: float, beta: float, limit: float | None) -> torch.Tensor:  # fmt: skip
    """Every expert on every token, one 2-D MatMul per expert and projection."""
    weights = _routing(logits, k, normalize)
    out = torch.zeros_like(x)
    for e in range(fc1.shape[0]):
        y = F.linear(_swiglu(F.linear(x, fc1[e], b1[e]), alpha, beta, limit), fc2[e], b2[e])
        out = out + y * weights[:, e : e + 1]
    return out


class _RoutedMoE(torch.autograd.Function):
    """The dense maths in PyTorch; one com.microsoft MoE node in the ONNX graph."""

    @staticmethod
    def forward(ctx: Any, *args: Any) -> Any:  # noqa: ARG004
        return _dense(*args)

    @staticmethod
    def symbolic(g: Any, x: Any, logits: Any, fc1: Any, b1: Any, fc2: Any, b2: Any, k: int,
                 normalize: bool, alpha: float, beta: float, limit: float | None) -> Any:  # fmt: skip
        attrs: dict[str, Any] = {
            "k_i": k, "normalize_routing_weights_i": int(normalize), "activation_type_s": "swiglu",
            "swiglu_fusion_i": 1, "activation_alpha_f": alpha, "activation_beta_f": beta,
        }  # fmt: skip
        if limit is not None:
            attrs["swiglu_limit_f"] = limit
        out = g.op("com.microsoft::MoE", x, logits, fc1, b1, fc2, b2, **attrs)
        out.setType(x.type())
        return out


def _stacked(experts: Any, gate: str, up: str, down: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.stack([getattr(m, gate).weight for m in experts])
    u = torch.stack([getattr(m, up).weight for m in experts])
    return _interleave(g, u), torch.stack([getattr(m, down).weight for m in experts])


def experts_of(block: Any, model_type: str) -> tuple[Experts, Any]:
    """``block``'s experts and its router (a module with ``weight`` and maybe ``bias``)."""
    with torch.no_grad():
        if model_type == "gpt_oss":
            ex = block.experts  # gate_up_proj [E, H, 2I], already interleaved; down [E, I, H]
            fc1 = ex.gate_up_proj.transpose(1, 2).contiguous()
            fc2 = ex.down_proj.transpose(1, 2).contiguous()
            found = Experts(fc1, ex.gate_up_proj_bias.clone(), fc2, ex.down_proj_bias.clone(),
                            block.router.top_k, True, ex.alpha, 1.0, ex.limit)  # fmt: skip
            return found, block.router
        if model_type == "granitemoe":
            w1 = block.input_linear.weight  # [E, 2I, H]: gate rows, then up rows
            i = w1.shape[1] // 2
            fc1, fc2 = _interleave(w1[:, :i], w1[:, i:]), block.output_linear.weight.clone()
            k, normalize, router = block.router.top_k, True, block.router.layer
        else:
            names = ("w1", "w3", "w2") if model_type in ("mixtral", "phimoe") else ("gate_proj", "up_proj", "down_proj")
            fc1, fc2 = _stacked(block.experts, *names)
            always = model_type in ("mixtral", "phimoe")
            k, normalize = block.top_k, always or bool(getattr(block, "norm_topk_prob", False))
            router = block.gate
        e = fc1.shape[0]
        zeros = torch.zeros(e, fc1.shape[1]), torch.zeros(e, fc2.shape[1])
        return Experts(fc1, zeros[0], fc2, zeros[1], k, normalize), router


def _sparsemixer_logits(logits: torch.Tensor, jitter_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's routing as logits whose softmax, top-2 and renormalisation give back its two
    multipliers divided by their sum, and that sum (the output is scaled by it)."""
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    mult, selected = sparsemixer(logits, jitter_eps=jitter_eps, training=False)
    pseudo = torch.full_like(logits, float("-inf")).scatter(1, selected, torch.log(mult))
    return pseudo, mult.sum(dim=-1, keepdim=True)


def _forward(model_type: str, routed: bool) -> Callable[..., Any]:
    def forward(self: Any, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        logits = F.linear(x, self._ep_router.weight, getattr(self._ep_router, "bias", None))
        routing, scale = logits, None
        if model_type == "phimoe":
            routing, scale = _sparsemixer_logits(logits, self.router_jitter_noise)
        ex = self._ep_experts
        # Buffers of the block, so the exporter writes them as initializers, not Constant nodes.
        weights = [getattr(self, f"_ep_{name}") for name in TENSORS]
        args_ = (x, routing, *weights, ex.k, ex.normalize, ex.alpha, ex.beta, ex.limit)
        out = _RoutedMoE.apply(*args_) if routed else _dense(*args_)
        if scale is not None:
            out = out * scale
        if model_type == "qwen2_moe":
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.reshape(shape), logits

    return forward


def block_classes() -> dict[str, type]:
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
    from transformers.models.granitemoe.modeling_granitemoe import GraniteMoeMoE
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
    from transformers.models.phimoe.modeling_phimoe import PhimoeSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    return {
        "mixtral": MixtralSparseMoeBlock, "qwen2_moe": Qwen2MoeSparseMoeBlock,
        "qwen3_moe": Qwen3MoeSparseMoeBlock, "olmoe": OlmoeSparseMoeBlock, "granitemoe": GraniteMoeMoE,
        "phimoe": PhimoeSparseMoeBlock, "gpt_oss": GptOssMLP,
    }  # fmt: skip


@contextlib.contextmanager
def patched(model: Any, model_type: str, routed: bool, release: bool = False) -> Iterator[int]:
    """``model``'s MoE blocks computing as the export writes them; yields how many. ``release``
    frees the experts' own weights once stacked (the model is then only good for this export)."""
    cls: Any = block_classes()[model_type]
    blocks: list[Any] = [m for m in model.modules() if isinstance(m, cls)]
    for block in blocks:
        block._ep_experts, block._ep_router = experts_of(block, model_type)
        for name in TENSORS:
            block.register_buffer(f"_ep_{name}", getattr(block._ep_experts, name))
        if release:
            for part in ("experts", "input_linear", "output_linear"):
                for p in getattr(block, part).parameters() if hasattr(block, part) else ():
                    p.data = torch.empty(0)
    original = cls.forward
    cls.forward = _forward(model_type, routed)
    try:
        yield len(blocks)
    finally:
        cls.forward = original
        for block in blocks:
            del block._ep_experts, block._ep_router
            for name in TENSORS:
                delattr(block, f"_ep_{name}")


_MODE = {"routed": True}


@contextlib.contextmanager
def registered(routed: bool = True) -> Iterator[None]:
    """optimum's export configs for the MoE families, their blocks exported ``routed`` or dense."""
    from optimum.exporters.onnx import model_configs as mc
    from optimum.exporters.onnx.model_patcher import ModelPatcher
    from optimum.exporters.tasks import TasksManager

    bases = {
        "mixtral": mc.MistralOnnxConfig, "qwen2_moe": mc.Qwen2OnnxConfig, "qwen3_moe": mc.Qwen2OnnxConfig,
        "olmoe": mc.Qwen2OnnxConfig, "granitemoe": mc.GraniteOnnxConfig, "phimoe": mc.MistralOnnxConfig,
        "gpt_oss": mc.GPTOssOnnxConfig,
    }  # fmt: skip

    def patcher(model_type: str) -> type:
        class Patcher(ModelPatcher):
            def __enter__(self) -> None:
                super().__enter__()
                self._ep = patched(self._model, model_type, _MODE["routed"], release=True)
                self._ep.__enter__()

            def __exit__(self, *exc: Any) -> None:
                self._ep.__exit__(*exc)
                super().__exit__(*exc)

        return Patcher

    register = TasksManager.create_register("onnx", overwrite_existing=True)
    for model_type, base in bases.items():
        config = type(f"{model_type}_routed_config", (base,), {"_MODEL_PATCHER": patcher(model_type)})
        register(model_type, *mc.COMMON_TEXT_GENERATION_TASKS)(config)
    previous, _MODE["routed"] = _MODE["routed"], routed
    try:
        yield
    finally:
        _MODE["routed"] = previous
