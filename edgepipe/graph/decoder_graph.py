"""Decoder graph rewrites: optimum's Llama-style attention -> one GroupQueryAttention node per layer.

optimum exports each layer's attention as ~100 small ops (reshapes, rotary slices, the causal mask,
repeat_kv Expand, Softmax, NaN guard). At SmolLM-135M's size, one decode step ran ~3,150 nodes and
the int4 MatMuls were only ~40% of its time: the rest is per-op overhead. onnxruntime's
``optimize_model`` (model_type "qwen3"/"gpt2") fuses RotaryEmbedding and SkipSimplifiedLayerNorm but
not this attention, so the rewrite is done here. The model's inputs and outputs keep their names,
shapes and meaning: present = concat(past, new) in BNSH, so the plain runtime loop keeps working.
GroupQueryAttention also updates a cache in place when past and present are one buffer of the
maximum length (``past_present_share_buffer``); the model's metadata says so (``KV_CACHE_KEY``), and
the bundle's runtime then binds one buffer per layer for the whole generation (runtime/kvcache.py).

Each layer's sliding window, rotary step and scale come from the config (graph/attention_layers.py),
the cos/sin tables from graph/rope.py. Limits (checked, or the model is left alone): fp32 or fp16
MatMul projections (run it before int4 quantization), RoPE whose cos/sin table is static (see
graph/rope.py), head_dim a multiple of 16 (onnxruntime's CPU kernel), batch entries without left
padding (GQA reads each row's length from ``attention_mask`` and assumes the valid tokens come first).
q/k norms, soft-capped scores and Gemma's per-layer windows and local RoPE table:
attention_variants.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import families
from ..runtime.kvcache import ATTENTION_HEADS_KEY, KV_CACHE_KEY, LOGITS_TO_KEEP, SHARED_BUFFER
from . import attention_layers, attention_patterns, attention_variants, external, rope

MS_DOMAIN = "com.microsoft"
# q/k/v/o, or Phi-3's packed qkv (GroupQueryAttention reads it as packed QKV) and o.
_PROJ = re.compile(r"/model/layers\.(\d+)/self_attn/(qkv|[qkvo])_proj/MatMul$")


def optimize(model_in: Path, model_out: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rewrite the attention of every layer to GroupQueryAttention; returns what was done.

    ``config`` is the Hugging Face config.json (read from beside ``model_in`` when omitted).
    """
    if config is None:
        config = json.loads((Path(model_in).parent / "config.json").read_text())
    model = external.load(Path(model_in))
    info = optimize_model(model, config)
    external.save(model, Path(model_out))
    return info


def optimize_model(model: Any, config: dict[str, Any]) -> dict[str, Any]:
    """``optimize`` on a loaded ModelProto, changed in place (external.save writes a model over
    2 GB with external data)."""
    before = len(model.graph.node)
    fused, reason = fuse_group_query_attention(model, config)
    packed = pack_projections(model.graph) if fused else 0
    keep = keep_last_logits(model.graph) if fused else False
    removed = remove_dead_nodes(model.graph)
    return {
        "attention_layers_fused": fused,
        "skipped": reason,
        "matmuls_packed": packed,
        "logits_to_keep": keep,
        "nodes_before": before,
        "nodes_after": len(model.graph.node),
        "nodes_removed": removed,
        "op_counts": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
    }


def fuse_group_query_attention(model: Any, config: dict[str, Any]) -> tuple[int, str | None]:
    """Replace each layer's attention subgraph by GroupQueryAttention; (layers fused, why not all)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    model_type = config.get("model_type")
    if not families.fused(str(model_type)):
        entry = families.FAMILIES.get(str(model_type))
        why = f": {entry.plain_because}" if entry else ""
        return 0, f"no attention rewrite for model_type {model_type!r}{why}"
    attention = attention_patterns.normalize(model, config)  # other families' names -> Llama's
    if isinstance(attention, str):
        return 0, attention
    config = attention.config
    rope_refused = rope.unsupported(config)
    if rope_refused:
        return 0, rope_refused
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    if head_dim % 16:  # onnxruntime's CPU kernel refuses other sizes at run time
        return 0, f"head_dim {head_dim} is not a multiple of 16 (GroupQueryAttention needs it)"
    why_not = attention_variants.unsupported(config)
    if why_not:
        return 0, why_not
    inputs = {i.name for i in graph.input}
    if "attention_mask" not in inputs:
        return 0, "the model has no attention_mask input"
    # Without position_ids (Gemma's export), GroupQueryAttention rotates row s of a step at
    # seqlens_k + 1 - sequence_length + s, the same positions as long as nothing is left-padded.
    positions = "position_ids" if "position_ids" in inputs else ""

    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    projections: dict[int, dict[str, Any]] = {}
    for n in graph.node:
        match = _PROJ.search(n.name)
        if match and n.op_type == "MatMul":
            projections.setdefault(int(match.group(1)), {})[match.group(2)] = n
    if not projections:
        return (
            0,
            "no /model/layers.N/self_attn/{q,k,v,o}_proj/MatMul nodes (not an optimum export?)",
        )

    def projected(matmul: Any) -> str:
        """The projection's output, after its bias Add when it has one (Qwen2)."""
        users = consumers.get(matmul.output[0], [])
        if len(users) == 1 and users[0].op_type == "Add" and users[0].name.endswith("_proj/Add"):
            return str(users[0].output[0])
        return str(matmul.output[0])

    dtype: int = TensorProto.FLOAT
    prefix = "edgepipe_gqa"
    rope_nodes, rope_inits, rope_positions = rope.rope_caches(config, head_dim, prefix, dtype)
    if not positions and rope_positions != "position_ids":
        return 0, "longrope without a position_ids input"
    positions = positions and rope_positions
    shared = [
        helper.make_node(
            "ReduceSum",
            ["attention_mask", f"{prefix}/axis1"],
            [f"{prefix}/lengths"],
            keepdims=0,
            name=f"{prefix}/ReduceSum",
        ),
        helper.make_node("Sub", [f"{prefix}/lengths", f"{prefix}/one"], [f"{prefix}/last"], name=f"{prefix}/Sub"),
        helper.make_node(
            "Cast", [f"{prefix}/last"], [f"{prefix}/seqlens_k"], to=TensorProto.INT32, name=f"{prefix}/Cast"
        ),
        helper.make_node("Shape", ["attention_mask"], [f"{prefix}/mask_len"], start=1, end=2, name=f"{prefix}/Shape"),
        helper.make_node("Squeeze", [f"{prefix}/mask_len"], [f"{prefix}/total64"], name=f"{prefix}/Squeeze"),
        helper.make_node(
            "Cast",
            [f"{prefix}/total64"],
            [f"{prefix}/total_sequence_length"],
            to=TensorProto.INT32,
            name=f"{prefix}/Cast_1",
        ),
    ]
    shared_init = [
        numpy_helper.from_array(np.array([1], np.int64), f"{prefix}/axis1"),
        numpy_helper.from_array(np.array(1, np.int64), f"{prefix}/one"),
        *rope_inits,
    ]
    variants = attention_variants.Variants(config, head_dim, prefix, dtype)
    why_not = variants.prepare(
        graph, {n: (projected(p["q"]), projected(p["k"])) for n, p in projections.items() if {"q", "k"} <= set(p)}
    )
    if why_not:
        return 0, why_not
    new_nodes = []
    for layer in sorted(projections):
        proj = projections[layer]
        past_k, past_v = f"past_key_values.{layer}.key", f"past_key_values.{layer}.value"
        present_k, present_v = f"present.{layer}.key", f"present.{layer}.value"
        packed = set(proj) == {"qkv", "o"}
        if not (packed or set(proj) == {"q", "k", "v", "o"}) or not {past_k, past_v} <= inputs:
            return 0, f"layer {layer}: missing projections or past inputs"
        if not packed and len({proj[x].input[0] for x in "qkv"}) != 1:
            return 0, f"layer {layer}: q/k/v projections read different inputs"
        qkv = [projected(proj["qkv"]), "", ""] if packed else [projected(proj[x]) for x in "qkv"]
        for name, past in ((present_k, past_k), (present_v, past_v)):
            concat = producer.get(name)
            if concat is None or concat.op_type != "Concat" or concat.input[0] != past:
                return 0, f"layer {layer}: {name} is not Concat({past}, new)"
            dtype = _elem_type(graph, past)
        attn_out = f"{prefix}/layers.{layer}/output"
        attrs = attention_layers.attributes(config, layer, head_dim)
        rotary = [f"{prefix}/cos_cache", f"{prefix}/sin_cache", positions] if attrs["do_rotary"] else []
        new_nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [*qkv, past_k, past_v, f"{prefix}/seqlens_k", f"{prefix}/total_sequence_length", *rotary],
                [attn_out, present_k, present_v],
                name=f"/model/layers.{layer}/self_attn/GroupQueryAttention",
                domain=MS_DOMAIN,
                num_heads=heads,
                kv_num_heads=kv_heads,
                rotary_interleaved=int(attention.interleaved),
                **attrs,
            )
        )
        variants.apply(new_nodes[-1], layer, rope.rope_caches)
        # The old Concats lose their outputs (the GQA node now writes present.*); o_proj reads GQA.
        producer[present_k].output[0] = f"{prefix}/dead/{layer}/k"
        producer[present_v].output[0] = f"{prefix}/dead/{layer}/v"
        proj["o"].input[0] = attn_out
    graph.initializer.extend(shared_init + variants.initializers)
    graph.node.extend(shared + rope_nodes + variants.nodes + new_nodes)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    _topological_sort(graph)
    _set_metadata(model, {KV_CACHE_KEY: SHARED_BUFFER, ATTENTION_HEADS_KEY: str(heads)})
    return len(new_nodes), None


def _set_metadata(model: Any, values: dict[str, str]) -> None:
    kept = [p for p in model.metadata_props if p.key not in values]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in values.items():
        model.metadata_props.add(key=key, value=value)


def keep_last_logits(graph: Any) -> bool:
    """An input ``logits_to_keep`` (as transformers' argument): the lm_head reads only the last
    that many positions; its default, 0, keeps them all.

    A prompt needs the last position's logits alone: for Qwen2.5-0.5B's 151,936-word vocabulary the
    lm_head over a 2,048-token prompt is ~40% of the prefill's arithmetic and 1.2 GB of logits.
    """
    from onnx import TensorProto, helper, numpy_helper

    producer = {out: n for n in graph.node for out in n.output}
    head = producer.get("logits")
    # Per-position ops after the lm_head: a soft-cap (Gemma 2: Div, Tanh, Mul), a bias (GPT-J,
    # Phi-2: Add), a Cast.
    while head is not None and head.op_type in ("Div", "Tanh", "Mul", "Cast", "Add"):
        head = next((producer[i] for i in head.input if i in producer and producer[i].op_type != "Constant"), None)
    if head is None or head.op_type != "MatMul" or LOGITS_TO_KEEP in {i.name for i in graph.input}:
        return False
    prefix = "edgepipe_logits"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0], np.int64), LOGITS_TO_KEEP),
            numpy_helper.from_array(np.array([np.iinfo(np.int64).max], np.int64), f"{prefix}/end"),
            numpy_helper.from_array(np.array([1], np.int64), f"{prefix}/axis"),
        ]
    )
    # An input with an initializer: the default unless a run feeds it (onnxruntime's
    # get_overridable_initializers lists it).
    graph.input.append(helper.make_tensor_value_info(LOGITS_TO_KEEP, TensorProto.INT64, [1]))
    graph.node.extend(
        [
            helper.make_node("Neg", [LOGITS_TO_KEEP], [f"{prefix}/start"], name=f"{prefix}/Neg"),
            helper.make_node(
                "Slice",
                [head.input[0], f"{prefix}/start", f"{prefix}/end", f"{prefix}/axis"],
                [f"{prefix}/hidden"],
                name=f"{prefix}/Slice",
            ),
        ]
    )
    head.input[0] = f"{prefix}/hidden"
    _topological_sort(graph)
    return True


def pack_projections(graph: Any) -> int:
    """One MatMul for q/k/v (GQA reads packed QKV) and one for gate/up; returns MatMuls removed.

    Fewer, wider MatMulNBits after int4 quantization: each call has a fixed cost (thread pool
    dispatch, activation quantization) that at this model size is comparable to its arithmetic.
    """
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    removed = 0

    def weight(node: Any) -> np.ndarray | None:
        if node is None or node.op_type != "MatMul" or node.input[1] not in weights:
            return None
        return external.array(weights[node.input[1]])

    def packed_matmul(nodes: list[Any], name: str) -> tuple[Any, list[int]] | None:
        arrays = [weight(n) for n in nodes]
        if any(a is None or a.ndim != 2 for a in arrays) or len({n.input[0] for n in nodes}) != 1:
            return None
        init = numpy_helper.from_array(np.concatenate(arrays, axis=1), f"{name}.weight")  # type: ignore[arg-type]
        graph.initializer.append(init)
        node = helper.make_node("MatMul", [nodes[0].input[0], init.name], [f"{name}_output_0"], name=f"{name}/MatMul")
        graph.node.append(node)
        return node, [int(a.shape[1]) for a in arrays]  # type: ignore[union-attr]

    def packed_split(nodes: list[Any], name: str) -> int:
        """One MatMul for ``nodes`` whose Split writes their outputs; MatMuls removed."""
        made = packed_matmul(nodes, name)
        if not made:
            return 0
        split = numpy_helper.from_array(np.array(made[1], np.int64), f"{name}/split")
        graph.initializer.append(split)
        graph.node.append(
            helper.make_node(
                "Split", [made[0].output[0], split.name], [n.output[0] for n in nodes], axis=-1, name=f"{name}/Split"
            )
        )
        for old in nodes:
            old.output[0] = f"{old.output[0]}/unpacked"
        return len(nodes) - 1

    for gqa in [n for n in graph.node if n.op_type == "GroupQueryAttention"]:
        layer = gqa.name.split("/")[2]  # "/model/layers.N/self_attn/GroupQueryAttention"
        qkv = [by_name.get(f"/model/{layer}/self_attn/{x}_proj/MatMul") for x in "qkv"]
        # Biased projections (Qwen2) keep their own MatMul + Add.
        plain = [n.output[0] if n else None for n in qkv] == list(gqa.input[:3])
        made = packed_matmul(qkv, f"/model/{layer}/self_attn/qkv_proj") if plain else None
        if made:
            gqa.input[0], gqa.input[1], gqa.input[2] = made[0].output[0], "", ""
            removed += 2
        elif qkv[2] is not None and qkv[2].output[0] == gqa.input[2]:
            # q and k normed before the attention (Qwen3, OLMo 2, Gemma 3): split for the norms.
            removed += packed_split(qkv, f"/model/{layer}/self_attn/qkv_proj")
        mlp = [
            by_name[f"/model/{layer}/mlp/{x}_proj/MatMul"]
            for x in ("gate", "up")
            if f"/model/{layer}/mlp/{x}_proj/MatMul" in by_name
        ]
        if len(mlp) == 2:
            removed += packed_split(mlp, f"/model/{layer}/mlp/gate_up_proj")
    _topological_sort(graph)
    return removed


def _elem_type(graph: Any, name: str) -> int:
    return int(next(i.type.tensor_type.elem_type for i in graph.input if i.name == name))


def remove_dead_nodes(graph: Any) -> int:
    """Drop nodes none of whose outputs reach a graph output, and initializers nobody reads."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names
                for sub in [attr.g, *attr.graphs]:
                    needed.update(i for n in sub.node for i in n.input)
    removed = len(graph.node) - len(keep)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    unused = [init for init in graph.initializer if init.name not in needed]
    for init in unused:
        graph.initializer.remove(init)
    value_info = [v for v in graph.value_info if v.name not in needed]
    for v in value_info:
        graph.value_info.remove(v)
    return removed


def _topological_sort(graph: Any) -> None:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError(f"graph has a cycle or a dangling input near {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
