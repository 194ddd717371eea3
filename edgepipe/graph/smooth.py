"""SmoothQuant-style rescaling before dynamic int8 (used by the quantize stage).

BERT-style activations carry a few channels with outlying magnitudes; one per-tensor activation
scale then wastes most of the int8 range. For each group of weight MatMuls sharing an input X,
s_c = max|X_c|^alpha / max|W_c,:|^(1-alpha); X is multiplied by 1/s (one Mul node) and W's rows by s,
which is exact in fp32 and moves the outliers into the per-channel-quantized weights (a weight that
other nodes read as well keeps its scale). On all-MiniLM-L6-v2, alpha 0.65 raised min cosine from
0.963 to 0.980 at ~0.1x speed cost (the Muls).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np


def smooth(src: Path, dst: Path, alpha: float, texts: list[str], tokenizer_path: Path, max_length: int) -> None:
    """Write ``dst``: ``src`` with activation outliers migrated into the MatMul weights."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from tokenizers import Tokenizer

    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            groups[node.input[0]].append(node)
    # A weight another node reads too cannot be rescaled for this group's input alone (DeBERTa's
    # query and key projections also read the relative position embeddings, through a Transpose).
    uses = Counter(name for node in model.graph.node for name in node.input if name in inits)
    for name in [n for n, nodes in groups.items() if any(uses[m.input[1]] > 1 for m in nodes)]:
        del groups[name]
    if not groups:
        onnx.save(model, str(dst))
        return

    tapped = onnx.load(str(src))
    for name in groups:
        tapped.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(tapped.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds_wanted = [i.name for i in session.get_inputs()]
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.enable_truncation(max_length=max_length)
    amax = {name: np.zeros(1, dtype=np.float32) for name in groups}
    for text in texts:
        ids = np.asarray([tokenizer.encode(text).ids], dtype=np.int64)
        available = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        }
        outs = session.run(list(groups), {k: available[k] for k in feeds_wanted})
        for name, value in zip(groups, outs, strict=True):
            amax[name] = np.maximum(amax[name], np.abs(value.reshape(-1, value.shape[-1])).max(0))

    muls = []
    for name, nodes in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        wmax = np.max([np.abs(w).max(1) for w in weights], axis=0)
        scale = np.maximum(amax[name], 1e-5) ** alpha / np.maximum(wmax, 1e-5) ** (1 - alpha)
        scale = np.clip(scale, 1e-2, 1e2).astype(np.float32)  # bounded: no channel blown up or erased
        inverse = f"{name}_smooth_inv"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        smoothed = f"{name}_smoothed"
        muls.append(
            (
                nodes[0],
                onnx.helper.make_node("Mul", [name, inverse], [smoothed], name=f"{name}_smooth"),
            )
        )
        for node, w in zip(nodes, weights, strict=True):
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array((w * scale[:, None]).astype(np.float32), node.input[1])
            )
            node.input[0] = smoothed
    ordered = list(model.graph.node)
    for first, mul in muls:  # right before its first consumer keeps the graph topologically sorted
        ordered.insert(ordered.index(first), mul)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    onnx.save(model, str(dst))
