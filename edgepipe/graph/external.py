"""ONNX models over protobuf's 2 GB: weights in one external data file beside the model.

A protobuf message cannot pass 2 GB, so optimum writes a larger export's tensors to a separate file,
and so does ``save`` here, as ``<model>.data`` beside ``<model>`` (the only external data a built
model has). ``load`` reads such a model without its data: each external tensor keeps its offset and
length with the data file's absolute path, and ``array`` maps the bytes it needs from that file, so
a stage holds the graph, its new tensors and the pages it touches rather than a second copy of
every weight. ``session`` and ``save`` put the locations back as onnxruntime and the bundle check
require them: a file name relative to the model's directory.

A decoder's built model always keeps its weights in the data file (``map_weights``): onnxruntime
maps it rather than holding a parsed copy beside the weights it prepacks, which lowers the
bundle's resident memory.

``EDGEPIPE_EXTERNAL_DATA_BYTES`` is a test hook: models whose tensors hold more bytes than this are
saved with external data (default: 2 GB less headroom for the graph), so a tiny model can take the
same path as a large one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

THRESHOLD_ENV = "EDGEPIPE_EXTERNAL_DATA_BYTES"
# protobuf's limit is 2 GiB; the graph itself (nodes, names, small tensors) needs room beside them.
DEFAULT_THRESHOLD = (1 << 31) - (128 << 20)
SUFFIX = ".data"
# Tensors smaller than this stay in the model file (onnx's own default); larger ones start on a
# 64-byte boundary (a cache line). onnxruntime maps the data file whatever the offsets (measured:
# the same resident memory at 1, 64 and 4096), and page alignment would add up to 4 KB per tensor
# to the file: 0.6 MB on SmolLM2-135M's int4 model, whose size is compared with llama.cpp's.
MIN_EXTERNAL = 1024
ALIGN = 64
_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


def threshold() -> int:
    value = os.environ.get(THRESHOLD_ENV)
    return int(value) if value else DEFAULT_THRESHOLD


def data_file(model: Path) -> Path:
    """Where ``save`` puts the external data of ``model``."""
    return model.with_name(model.name + SUFFIX)


def files(model: Path) -> list[Path]:
    """The model file and its data file, where it has one."""
    data = data_file(model)
    return [model, data] if data.is_file() else [model]


def size(model: Path) -> int:
    """Bytes on disk of the model with its external data."""
    return sum(p.stat().st_size for p in files(model))


def digest(outputs: dict[str, str], rel: str) -> str:
    """The model's identity from a stage's output digests: the model file's sha256, or, with
    external data, the sha256 of both files' digests (the model file alone holds only offsets)."""
    data = outputs.get(rel + SUFFIX)
    if data is None:
        return outputs[rel]
    return hashlib.sha256(f"{outputs[rel]}\n{data}\n".encode()).hexdigest()


def copy(src: Path, dst: Path) -> None:
    """Copy a model file and its external data (the data file renamed with it)."""
    shutil.copyfile(src, dst)
    if data_file(src).is_file():
        shutil.copyfile(data_file(src), data_file(dst))


def _graphs(graph: Any) -> Iterator[Any]:
    """A graph and every subgraph in its nodes' attributes."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g, *attr.graphs] if attr.HasField("g") else attr.graphs:
                yield from _graphs(sub)


def _initializers(model: Any) -> Iterator[Any]:
    for graph in _graphs(model.graph):
        yield from graph.initializer


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of the model: initializers and constant attributes, subgraphs too."""
    for graph in _graphs(model.graph):
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def is_external(tensor: Any) -> bool:
    from onnx import TensorProto

    return bool(tensor.data_location == TensorProto.EXTERNAL)


def _info(tensor: Any) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def _set_info(tensor: Any, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = TensorProto.EXTERNAL


def has_external(model: Any) -> bool:
    return any(is_external(t) for t in _tensors(model))


def load(path: Path) -> Any:
    """The model at ``path``; its external tensors stay on disk, located by absolute path."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    root = path.resolve().parent
    for tensor in _tensors(model):
        if is_external(tensor):
            info = _info(tensor)
            location, offset = root / info["location"], int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else location.stat().st_size - offset
            _set_info(tensor, str(location), offset, length)
    return model


def _raw(tensor: Any) -> bytes | np.ndarray:
    """A tensor's bytes as stored: raw_data, or its external bytes mapped from the data file."""
    if not is_external(tensor):
        return bytes(tensor.raw_data)
    info = _info(tensor)
    offset, length = int(info.get("offset", 0)), int(info["length"])
    if length == 0:
        return b""
    return np.memmap(info["location"], np.uint8, "r", offset, (length,))


def array(tensor: Any) -> np.ndarray:
    """A tensor's values; an external one is a read-only map of the data file."""
    from onnx import helper, numpy_helper

    if not is_external(tensor):
        return numpy_helper.to_array(tensor)
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    raw = _raw(tensor)
    flat = np.frombuffer(raw, dtype=dtype) if len(raw) else np.zeros(0, dtype)
    return flat.reshape(tuple(tensor.dims))


def inline(model: Any) -> None:
    """Read every external tensor into the model (before saving it whole, or handing it to a tool
    that reads raw_data)."""
    from onnx import TensorProto

    for tensor in _tensors(model):
        if is_external(tensor):
            tensor.raw_data = bytes(_raw(tensor))
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT


def tensor_bytes(model: Any) -> int:
    """Bytes the model's tensors hold, in the file or outside it."""
    total = 0
    for tensor in _tensors(model):
        total += int(_info(tensor)["length"]) if is_external(tensor) else tensor.ByteSize()
    return total


def written_bytes(model: Any) -> int:
    """About the bytes ``model`` takes on disk: its message and its external tensors (exact for a
    model saved whole; the data file adds alignment)."""
    external = sum(int(_info(t)["length"]) for t in _tensors(model) if is_external(t))
    return int(model.ByteSize()) + external


def _relative(model: Any) -> Path | None:
    """Point external tensors at their data file by name; the directory they lie in (one only)."""
    folders = set()
    for tensor in _tensors(model):
        if is_external(tensor):
            info = _info(tensor)
            location = Path(info["location"])
            folders.add(location.parent)
            _set_info(tensor, location.name, int(info.get("offset", 0)), int(info["length"]))
    if len(folders) > 1:
        raise ValueError(f"external data in several directories: {sorted(map(str, folders))}")
    return folders.pop() if folders else None


def session(model: Any, options: Any, providers: list[str]) -> Any:
    """An onnxruntime session of a loaded model, its external data read where it lies."""
    import onnx
    import onnxruntime as ort

    folder = None
    if has_external(model):
        model_copy = onnx.ModelProto()
        model_copy.CopyFrom(model)  # the graph only: external tensors hold no bytes here
        folder = _relative(model_copy)
        model = model_copy
    if folder is not None:
        options.add_session_config_entry(_FOLDER_KEY, str(folder))
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def map_weights(path: Path) -> None:
    """Move the weights of the model at ``path`` into ``<path>.data`` if they are in the model
    file. onnxruntime maps such a file instead of reading it: the float and int4
    weights it prepacks at load are then not also held as a second, parsed copy for the session's
    life (measured on a Qwen2.5-0.5B-shaped int4 decoder: 745 MB resident after load instead of
    838 MB; SmolLM2-135M's: 229 instead of 250)."""
    model = load(path)
    if not has_external(model):
        save(model, path, keep_external=True)


def save(model: Any, path: Path, keep_external: bool = False) -> None:
    """Write ``model`` to ``path``: whole when its tensors fit under the threshold (and not
    ``keep_external``), else with its tensors in ``<path>.data``. Either way by rename, so ``path``
    may be the file it came from; the loaded model stays usable (its external tensors then point at
    the new data file)."""
    import onnx

    data, tmp_model = data_file(path), path.with_name(f".{path.name}.tmp")
    if not keep_external and tensor_bytes(model) <= threshold():
        inline(model)
        onnx.save(model, str(tmp_model))
        tmp_model.replace(path)
        data.unlink(missing_ok=True)
        return
    tmp_data = path.with_name(f".{data.name}.tmp")
    with open(tmp_data, "wb") as out:
        for tensor in _initializers(model):  # attributes stay in the graph, as onnx does
            if not is_external(tensor) and not tensor.HasField("raw_data"):
                if tensor.ByteSize() < MIN_EXTERNAL:
                    continue
                tensor.CopyFrom(onnx.numpy_helper.from_array(array(tensor), tensor.name))
            raw = _raw(tensor)
            if not is_external(tensor) and len(raw) < MIN_EXTERNAL:
                continue
            offset = -(-out.tell() // ALIGN) * ALIGN
            out.seek(offset)
            for start in range(0, len(raw), 64 << 20):  # bounded copies of mapped bytes
                out.write(bytes(raw[start : start + (64 << 20)]))
            tensor.ClearField("raw_data")
            _set_info(tensor, str(data.resolve()), offset, len(raw))
    on_disk = onnx.ModelProto()
    on_disk.CopyFrom(model)
    _relative(on_disk)
    onnx.save(on_disk, str(tmp_model))
    tmp_data.replace(data)
    tmp_model.replace(path)
