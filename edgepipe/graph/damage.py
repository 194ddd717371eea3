"""How much each weight MatMul alone costs when quantized: KL(fp32 || one swapped) per node.

One onnxruntime session serves every node: the weights become graph inputs, fed fp32 except the
node under test, whose dequantized codes are fed instead. That prices all of a decoder's MatMuls
in one pass over the probe texts per node (SmolLM2-135M: 120 MatMuls), without building a model
per node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .. import progress
from . import external, nbits


def log_softmax(x: np.ndarray) -> np.ndarray:
    """In float64 along the last axis (the next-token scores use it too)."""
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def rank(
    model: Any, codes: nbits.Codes, feeds: Iterable[Mapping[str, np.ndarray]], threads: int = 0
) -> list[dict[str, Any]]:
    """Every weight MatMul of ``model`` with the mean KL its codes alone cause, worst first."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    nodes = nbits.weight_matmuls(probe.graph)
    weights = list(dict.fromkeys(n.input[1] for n in nodes))
    inits = {t.name: t for t in probe.graph.initializer}
    fp32 = {name: external.array(inits[name]) for name in weights}  # mapped, not copied
    for name in weights:
        probe.graph.initializer.remove(inits[name])
        probe.graph.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, fp32[name].shape))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings are about the probe graph, not the model
    options.intra_op_num_threads = threads
    session = external.session(probe, options, ["CPUExecutionProvider"])
    texts = [dict(f) for f in feeds]
    reference = [log_softmax(session.run(["logits"], {**f, **fp32})[0][0]) for f in texts]
    ranking = []
    with progress.task("ranking MatMuls by damage", len(nodes)) as advance:
        for node in nodes:
            bits = next(b for (w, b) in codes if w == node.input[1])
            swapped = {**fp32, node.input[1]: codes[(node.input[1], bits)].dequantize(fp32[node.input[1]].shape[0])}
            kls = []
            for feed, lp in zip(texts, reference, strict=True):
                lq = log_softmax(session.run(["logits"], {**feed, **swapped})[0][0])
                kls.append(np.sum(np.exp(lp) * (lp - lq), axis=-1))
            ranking.append({"node": node.name, "mean_kl": round(float(np.concatenate(kls).mean()), 8)})
            advance(1)
    ranking.sort(key=lambda r: (-r["mean_kl"], r["node"]))
    return ranking
