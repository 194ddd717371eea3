"""Family attention layouts, brought to the Llama shape that decoder_graph's rewrite reads.

decoder_graph replaces each layer's attention by one GroupQueryAttention node between the q/k/v
projections (``/model/layers.N/self_attn/{q,k,v}_proj/MatMul``, a bias Add allowed) and the output
projection (``o_proj``). The other families export the same attention under their own names, and
some with one packed ``query_key_value`` projection: ``normalize`` renames their nodes to that shape,
splits a packed projection into q/k/v MatMuls (columns reordered as the model's view() reads them),
and returns the config with the Llama names and how GroupQueryAttention must compute the layer:

- GPT-NeoX (Pythia), Phi-2: partial rotary (``cos_cache`` narrower than head_size / 2: onnxruntime
  rotates the first 2 x its width dims of each head and copies the rest; the width must be a
  multiple of 8),
- GPT-J: partial rotary on interleaved pairs (``rotary_interleaved``),
- Falcon: multi-query (one KV head) packed projection; grouped (``new_decoder_architecture``, whose
  cache holds K/V repeated per query head) is split the same way, though optimum-onnx 0.1.0 does
  not export it (families.py refuses it),
- GPT-Neo: no rotary (learned positions), scores not scaled by 1/sqrt(d) (``scale`` 1.0), and a
  local window on its ``local`` layers (``local_window_size``: the positions a query sees, itself
  included, as GPT-Neo's ``window_size``; tested across the window).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .attention_variants import LOCAL

LLAMA = "/model/layers.{layer}/self_attn/{proj}_proj/{op}"
# The attention block of each family's export and its output projection's name.
_FAMILIES = {
    "phi": ("self_attn", "dense"),
    "gptj": ("attn", "out_proj"),
    "gpt_neo": ("attn/attention", "out_proj"),
    "gpt_neox": ("attention", "dense"),
    "falcon": ("self_attention", "dense"),
}


@dataclass(frozen=True)
class Attention:
    """The config (Llama names) GroupQueryAttention's layers are read from (attention_layers:
    windows, NoPE layers, scale), and whether its rotary pairs are interleaved (GPT-J)."""

    config: dict[str, Any]
    interleaved: bool = False


def normalize(model: Any, config: dict[str, Any]) -> Attention | str:
    """``model`` (changed in place) with its attention under Llama's names; or why it cannot be.

    A model_type without an entry here is returned as it is (Llama, Mistral, Qwen2 export so).
    """
    model_type = str(config.get("model_type"))
    if model_type not in _FAMILIES:
        return _checked(Attention(config))
    attention = _attention(model_type, config)
    if isinstance(attention, str):
        return attention
    block, out = _FAMILIES[model_type]
    found = _rename(model.graph, block, out, attention.config)
    _skip_present_casts(model.graph)
    return found or _checked(attention)


def _attention(model_type: str, config: dict[str, Any]) -> Attention | str:
    """The Llama-named config and the GroupQueryAttention settings of ``model_type``."""
    heads = int(config.get("num_attention_heads") or config.get("n_head") or config["num_heads"])
    hidden = int(config.get("hidden_size") or config["n_embd"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    positions = config.get("max_position_embeddings") or config.get("n_positions")
    common = {
        "num_attention_heads": heads,
        "num_hidden_layers": int(config.get("num_hidden_layers") or config.get("n_layer") or config["num_layers"]),
        "hidden_size": hidden,
        "head_dim": head_dim,
        "max_position_embeddings": int(positions or 2048),
        "num_key_value_heads": heads,
        "rope_theta": float(config.get("rope_theta") or config.get("rotary_emb_base") or 10000.0),
    }
    cfg = {**config, **common}
    if model_type == "gpt_neox":
        cfg["partial_rotary_factor"] = float(config.get("rotary_pct", 1.0))
        return Attention(cfg)
    if model_type == "phi":
        if config.get("qk_layernorm"):
            return "q/k LayerNorm before the rotary step (qk_layernorm)"
        return Attention(cfg)
    if model_type == "gptj":
        cfg["partial_rotary_factor"] = int(config.get("rotary_dim") or head_dim) / head_dim
        return Attention(cfg, interleaved=True)
    if model_type == "falcon":
        if config.get("alibi"):
            return "ALiBi position bias (GroupQueryAttention has no ALiBi)"
        if not config.get("new_decoder_architecture") and config.get("multi_query", True):
            cfg["num_key_value_heads"] = 1  # Falcon-7B: one KV head
        # (new_decoder_architecture: the export's cache repeats each KV head for its query heads)
        return Attention(cfg)
    # gpt_neo: "local" layers see the last window_size positions (themselves included), no layer
    # rotates (SmolLM3's NoPE flags) and scores are not scaled (Granite's attention_multiplier).
    layers = config.get("attention_layers") or []
    window = int(config.get("window_size") or 0)
    if "local" in layers and window < 1:
        return "local attention layers without a window_size"
    cfg["no_rope_layers"] = [0] * int(cfg["num_hidden_layers"])
    cfg["attention_multiplier"] = 1.0
    cfg["sliding_window"] = window or None
    cfg["layer_types"] = [LOCAL if kind == "local" else "full_attention" for kind in layers]
    return Attention(cfg)


def _checked(attention: Attention) -> Attention | str:
    """``attention``, or why onnxruntime's kernel would refuse its rotary step."""
    flags = attention.config.get("no_rope_layers")
    if flags and not any(flags):  # no layer rotates
        return attention
    config = attention.config
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    width = int(head_dim * float(config.get("partial_rotary_factor", 1.0))) // 2
    if width % 8:
        return f"rotary width {2 * width} of head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention needs it)"
    return attention


def _rename(graph: Any, block: str, out: str, config: dict[str, Any]) -> str | None:
    """Rename (or split) each layer's projections to Llama's names; None, or what is missing."""
    pattern = re.compile(
        rf"/(?:layers|h)\.(\d+)/{re.escape(block)}/(q_proj|k_proj|v_proj|query_key_value|{out})"
        r"/(MatMul|Add)$"
    )
    found: dict[int, dict[str, Any]] = {}
    for node in graph.node:
        match = pattern.search(node.name)
        if match and node.op_type == match.group(3):
            found.setdefault(int(match.group(1)), {})[f"{match.group(2)}/{match.group(3)}"] = node
    if not found:
        return f"no /{block}/ q/k/v or query_key_value projections in the export"
    names = {"q_proj": "q", "k_proj": "k", "v_proj": "v", out: "o"}
    for layer, nodes in sorted(found.items()):
        if f"{out}/MatMul" not in nodes:
            return f"layer {layer}: no {block}/{out} projection"
        packed = nodes.get("query_key_value/MatMul")
        if packed is not None:
            problem = _split(graph, layer, packed, nodes.get("query_key_value/Add"), config)
            if problem:
                return f"layer {layer}: {problem}"
        for key, node in nodes.items():
            proj, op = key.split("/")
            if proj in names and (op == "MatMul" or proj != out):
                node.name = LLAMA.format(layer=layer, proj=names[proj], op=op)
    return None


def _skip_present_casts(graph: Any) -> None:
    """``present.N.*`` written by Concat(past, new) itself, not through a Cast to float after it
    (GPT-J and GPT-Neo cast the cache to the hidden states' type, float already)."""
    from onnx import TensorProto, helper

    producer = {out: n for n in graph.node for out in n.output}
    pasts = {i.name for i in graph.input if i.name.startswith("past_key_values.")}
    for output in graph.output:
        cast = producer.get(output.name)
        if cast is None or cast.op_type != "Cast" or not output.name.startswith("present."):
            continue
        concat = producer.get(cast.input[0])
        to = next((a.i for a in cast.attribute if a.name == "to"), None)
        if concat is None or concat.op_type != "Concat" or concat.input[0] not in pasts:
            continue
        if to != TensorProto.FLOAT:  # a float16 cache: left as it is (and the rewrite refuses)
            continue
        # The Concat writes the output; its old name (what the attention reads) becomes an Identity.
        old = concat.output[0]
        concat.output[0] = output.name
        cast.output[0] = f"{output.name}/cast"
        graph.node.append(helper.make_node("Identity", [output.name], [old], name=f"{old}/Identity"))


def _constant(graph: Any, name: str) -> Any:
    """The initializer ``name`` is, through Identity nodes (the exporter shares equal tensors so)."""
    inits = {t.name: t for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    while name not in inits and name in producer and producer[name].op_type == "Identity":
        name = producer[name].input[0]
    return inits.get(name)


def _split(graph: Any, layer: int, matmul: Any, add: Any, config: dict[str, Any]) -> str | None:
    """Replace a packed query_key_value projection by q/k/v MatMuls (and bias Adds).

    Its columns are grouped per KV head: the group's query heads, then its key and its value
    (GPT-NeoX: a group per head; Falcon-7B: one group; Falcon-40B: a group per KV head, whose key
    and value the export repeats for each of the group's query heads).
    """
    from onnx import helper, numpy_helper

    stored = _constant(graph, matmul.input[1])
    if stored is None:
        return "query_key_value weight is not a constant"
    weight = numpy_helper.to_array(stored)
    bias = None
    if add is not None:
        other = [name for name in add.input if name != matmul.output[0]]
        stored = _constant(graph, other[0]) if len(other) == 1 else None
        if stored is None:
            return "query_key_value bias is not one constant"
        bias = numpy_helper.to_array(stored)
    heads, head_dim = int(config["num_attention_heads"]), int(config["head_dim"])
    new_architecture = bool(config.get("new_decoder_architecture"))
    if config.get("model_type") == "gpt_neox":
        groups = heads
    elif new_architecture:
        groups = int(config.get("num_kv_heads") or heads)
    else:
        groups = int(config["num_key_value_heads"])
    per_group = heads // groups
    if weight.ndim != 2 or weight.shape[1] != groups * (per_group + 2) * head_dim:
        return f"query_key_value is {weight.shape}, not {groups} groups of {per_group + 2} heads"

    def columns(slots: list[tuple[int, int]]) -> np.ndarray:
        """The columns of (group, slot) heads in that order."""
        return np.concatenate([np.arange(head_dim) + (g * (per_group + 2) + s) * head_dim for g, s in slots])

    query = columns([(g, i) for g in range(groups) for i in range(per_group)])
    repeat = per_group if new_architecture else 1  # the export's cache holds a head per query
    key = columns([(g, per_group) for g in range(groups) for _ in range(repeat)])
    value = columns([(g, per_group + 1) for g in range(groups) for _ in range(repeat)])
    for proj, cols in (("q", query), ("k", key), ("v", value)):
        name = LLAMA.format(layer=layer, proj=proj, op="MatMul")
        graph.initializer.append(numpy_helper.from_array(weight[:, cols].copy(), f"{name}.weight"))
        output = f"{name}_output_0"
        graph.node.append(helper.make_node("MatMul", [matmul.input[0], f"{name}.weight"], [output], name=name))
        if bias is not None:
            add_name = LLAMA.format(layer=layer, proj=proj, op="Add")
            graph.initializer.append(numpy_helper.from_array(bias[cols].copy(), f"{add_name}.bias"))
            graph.node.append(
                helper.make_node("Add", [output, f"{add_name}.bias"], [f"{add_name}_output_0"], name=add_name)
            )
    matmul.name = f"{matmul.name}/packed"
    if add is not None:
        add.name = f"{add.name}/packed"
    return None
