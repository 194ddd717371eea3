"""Tied embeddings stored once: the lm_head reads the embedding table through a Transpose.

optimum-onnx's export of a model whose lm_head shares the token embedding (``tie_word_embeddings``)
writes the table twice: once for the Gather, once transposed for the lm_head's MatMul (652 MB ONNX
for SmolLM-135M's 538 MB of weights). onnxruntime folds the Transpose when it loads the model, so
the file holds the table once and the numbers are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import external


@dataclass(frozen=True)
class Tied:
    """A token embedding table and the MatMuls (lm_head) that use it transposed."""

    table: str  # the Gather's initializer, [vocab, hidden]
    gathers: tuple[str, ...]  # Gather nodes reading it
    matmuls: tuple[str, ...]  # MatMul nodes reading it (after dedupe: through ``transposed``)
    transposed: str  # the Transpose node's output the MatMuls read


def _initializers(graph: Any) -> dict[str, Any]:
    return {t.name: t for t in graph.initializer}


def tables(graph: Any) -> dict[str, list[str]]:
    """2-D float initializers read by Gather nodes (embedding tables) -> those Gathers' names."""
    from onnx import TensorProto

    inits = _initializers(graph)
    found: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        t = inits[node.input[0]]
        if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT:
            found.setdefault(node.input[0], []).append(node.name)
    return found


def dedupe(model_path: Path) -> int:
    """``dedupe_model`` on the model file ``model_path``, rewritten in place."""
    model = external.load(model_path)
    dropped = dedupe_model(model)
    if dropped:
        external.save(model, model_path)
    return dropped


def dedupe_model(model: Any) -> int:
    """Make each lm_head weight equal to an embedding table's transpose read the table through a
    Transpose (``model`` changed in place); return how many initializers were dropped."""
    from onnx import helper

    graph = model.graph
    inits = _initializers(graph)
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name in tables(graph):
        by_shape.setdefault(tuple(reversed(inits[name].dims)), []).append(name)
    replaced: dict[str, str] = {}  # duplicate initializer -> the table it repeats
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1] in replaced:
            continue
        weight = inits[node.input[1]]
        for table in by_shape.get(tuple(weight.dims), []):
            if np.array_equal(external.array(weight), external.array(inits[table]).T):
                replaced[node.input[1]] = table
                break
    if not replaced:
        return 0
    transposes = []
    for duplicate, table in replaced.items():
        out = f"{table}_transposed"
        transposes.append(helper.make_node("Transpose", [table], [out], name=f"{table}_Transpose", perm=[1, 0]))
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == duplicate:
                    node.input[i] = out
        graph.initializer.remove(inits[duplicate])
    # Topological order: the Transposes read initializers only, so they may come first.
    nodes = transposes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return len(replaced)


def find(graph: Any) -> list[Tied]:
    """The tied tables of a deduplicated graph: Gather table -> Transpose -> MatMul."""
    gathered = tables(graph)
    found = []
    for node in graph.node:
        if node.op_type != "Transpose" or node.input[0] not in gathered:
            continue
        matmuls = tuple(n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] == node.output[0])
        if matmuls:
            found.append(Tied(node.input[0], tuple(gathered[node.input[0]]), matmuls, node.output[0]))
    return found
