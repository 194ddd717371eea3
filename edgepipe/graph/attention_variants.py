"""What GroupQueryAttention takes beyond Llama's attention, layer by layer (decoder_graph asks here).

- **q/k RMSNorm before RoPE** (Qwen3 and Gemma 3 per head, OLMo 2 over the whole projection): the
  attention reads q and k after the exported norm, put back to [batch, seq, heads x head_dim].
  onnxruntime 1.32's own ``q_norm_weight``/``k_norm_weight`` inputs are honoured by its CUDA and
  WebGPU kernels only (CPU: "q_norm_weight / k_norm_weight inputs are not supported. The per-head
  Q/K RMS normalization prologue is implemented only on the CUDA and WebGPU EPs."), and Gemma's
  norm scales by 1 + weight: the exported norm stays in the graph.
- **Soft-capped scores** (Gemma 2's ``attn_logit_softcapping``) -> ``softcap``: cap x tanh(s / cap)
  after the scale and before the mask, as transformers does. ``query_pre_attn_scalar`` -> ``scale``.
  (Both attributes are set with the others by attention_layers.attributes.)
- **Sliding windows per layer** (``layer_types``; Gemma 2: every other layer, Gemma 3: five of six
  unless ``layer_types`` says): transformers lets a query see the W most recent keys, itself
  included, and so does onnxruntime 1.32's CPU kernel with ``local_window_size`` W (measured:
  W - 1 differs from PyTorch from the W-th position on, W matches it exactly).
- **A second RoPE table** for Gemma 3's local layers (``rope_local_base_freq``, no scaling); its
  global layers' ``linear`` scaling divides the frequencies by the factor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LOCAL = "sliding_attention"
# The rope_scaling types this module applies itself (the global table of a model with a local one).
SCALINGS = ("default", "linear")
# Every n-th layer attends globally, the others slide, where a config has no layer_types.
PATTERNS = {"gemma2": 2, "gemma3_text": 6}


def layer_types(config: dict[str, Any]) -> list[str]:
    """Each layer's attention kind as transformers decides it ("sliding_attention" or not)."""
    count = int(config["num_hidden_layers"])
    if config.get("layer_types"):
        return [str(t) for t in config["layer_types"]]
    pattern = PATTERNS.get(str(config.get("model_type")), 0)
    if config.get("model_type") == "gemma3_text":
        pattern = int(config.get("sliding_window_pattern") or pattern)
    return [LOCAL if pattern and (i + 1) % pattern else "full_attention" for i in range(count)]


def owns_rope(config: dict[str, Any]) -> bool:
    """Whether this module builds the model's cos/sin tables (a local base frequency: Gemma 3)."""
    return config.get("rope_local_base_freq") is not None


def unsupported(config: dict[str, Any]) -> str | None:
    """Why GroupQueryAttention cannot take this model's attention variant, or None."""
    if owns_rope(config):
        scaling = config.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in SCALINGS:
            return f"rope_scaling {kind!r} beside a local RoPE base (only linear is rebuilt)"
    if config.get("use_bidirectional_attention"):  # Gemma 3 as an encoder (EmbeddingGemma)
        return "bidirectional attention (GroupQueryAttention here is causal)"
    if any(t == LOCAL for t in layer_types(config)) and not config.get("sliding_window"):
        return "sliding_attention layers without a sliding_window"
    return None


@dataclass
class Variants:
    """The per-layer settings and extra nodes of one model's rewrite."""

    config: dict[str, Any]
    head_dim: int
    prefix: str
    dtype: int
    nodes: list[Any] = field(default_factory=list)
    initializers: list[Any] = field(default_factory=list)
    _tables: dict[str, tuple[str, str]] = field(default_factory=dict)
    _inputs: dict[tuple[int, str], str] = field(default_factory=dict)

    def prepare(self, graph: Any, qk: dict[int, tuple[str, str]]) -> str | None:
        """Find each layer's q and k as GroupQueryAttention must read them (``qk``: layer -> the
        q and k projections' outputs), changing nothing in ``graph``; why not, or None."""
        for layer, pair in sorted(qk.items()):
            for which, projected in zip("qk", pair, strict=True):
                normed = self._normed(graph, layer, which, projected)
                if normed is None:
                    return f"layer {layer}: {which}_norm does not read the {which}_proj output"
                self._inputs[(layer, which)] = normed
        return None

    def apply(self, gqa: Any, layer: int, rope_caches: Any) -> None:
        """Point ``gqa`` (one layer's new node) at its q/k (``prepare``) and RoPE table (its
        attributes, soft-cap and scale included, come from attention_layers)."""
        config = self.config
        kind = layer_types(config)[layer]
        if owns_rope(config):
            gqa.input[7], gqa.input[8] = self._table("local" if kind == LOCAL else "global", rope_caches)
        gqa.input[0] = self._inputs.get((layer, "q"), gqa.input[0])
        gqa.input[1] = self._inputs.get((layer, "k"), gqa.input[1])

    def _table(self, kind: str, rope_caches: Any) -> tuple[str, str]:
        """The cos/sin tables of ``kind`` ("local": rope_local_base_freq; "global": rope_theta with
        the linear scaling factor), built once."""

        if kind not in self._tables:
            prefix = f"{self.prefix}/rope_{kind}"
            theta = self.config["rope_local_base_freq" if kind == "local" else "rope_theta"]
            # The global table keeps the model's scaling (linear: rope.py divides inv_freq by its
            # factor); the local one has none.
            scaling = self.config.get("rope_scaling") if kind == "global" else None
            plain = {**self.config, "rope_theta": theta, "rope_scaling": scaling}
            nodes, inits, _ = rope_caches(plain, self.head_dim, prefix, self.dtype)
            # Constants rope_caches takes from the rewrite's shared ones (axis1): read those.
            known = {i.name for i in inits} | {o for n in nodes for o in n.output}
            for node in nodes:
                for i, name in enumerate(node.input):
                    if name.startswith(f"{prefix}/") and name not in known:
                        node.input[i] = f"{self.prefix}/{name[len(prefix) + 1 :]}"
            self.nodes += nodes
            self.initializers += inits
            self._tables[kind] = (f"{prefix}/cos_cache", f"{prefix}/sin_cache")
        return self._tables[kind]

    def _normed(self, graph: Any, layer: int, which: str, projected: str) -> str | None:
        """The tensor GroupQueryAttention reads for q or k: ``projected`` itself when the layer
        has no ``{which}_norm``, else the norm's output as [batch, seq, heads x head_dim]; None
        when the norm's input is not ``projected`` through Reshape/Transpose alone."""
        from onnx import helper, numpy_helper

        scope = f"/model/layers.{layer}/self_attn/{which}_norm/"
        inside = [n for n in graph.node if n.name.startswith(scope)]
        if not inside:
            return projected
        made = {out for n in inside for out in n.output}
        outer = [n for n in graph.node if not n.name.startswith(scope)]
        exits = {name for n in outer for name in n.input if name in made}
        producer = {out: n for n in graph.node for out in n.output}
        initializers = {init.name for init in graph.initializer}

        def constant(name: str) -> bool:  # the exporter shares equal weights through Identity
            node = producer.get(name)
            if node is None:
                return name in initializers
            return node.op_type == "Constant" or (node.op_type == "Identity" and constant(node.input[0]))

        entries = {name for n in inside for name in n.input if name and name not in made}
        entries = {name for name in entries if not constant(name)}
        if len(exits) != 1 or len(entries) != 1:
            return None
        # From the norm's input back to the projection: a Reshape to heads, maybe a Transpose.
        steps: list[str] = []
        name = next(iter(entries))
        while name != projected:
            node = producer.get(name)
            if node is None or node.op_type not in ("Reshape", "Transpose") or len(steps) > 2:
                return None
            steps.append(node.op_type)
            name = node.input[0]
        out = next(iter(exits))
        base = f"{self.prefix}/layers.{layer}/{which}_normed"
        if "Transpose" in steps:  # normed as [batch, heads, seq, head_dim] (Gemma 3)
            self.nodes.append(
                helper.make_node("Transpose", [out], [f"{base}/bshd"], perm=[0, 2, 1, 3], name=f"{base}/Transpose")
            )
            out = f"{base}/bshd"
        if steps:  # per head: [batch, seq, heads, head_dim] -> [batch, seq, heads x head_dim]
            shape = f"{self.prefix}/bs_hd"
            if shape not in {i.name for i in self.initializers}:
                self.initializers.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), shape))
            self.nodes.append(helper.make_node("Reshape", [out, shape], [base], name=f"{base}/Reshape"))
            out = base
        return out
