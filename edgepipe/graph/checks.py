"""Checks on an ONNX file before it is trusted: where its external data points, and whether the
target's onnxruntime can run its opset and IR version."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ..catalog.config import Target
from ..errors import ConfigError, ModelError

# onnxruntime release -> (highest ONNX opset, highest IR version) it runs; from onnxruntime's
# compatibility matrix (onnxruntime.ai/docs/reference/compatibility.html).
ORT_SUPPORT: dict[tuple[int, int], tuple[int, int]] = {
    (1, 13): (17, 8),
    (1, 14): (18, 8),
    (1, 15): (19, 9),
    (1, 16): (19, 9),
    (1, 17): (20, 9),
    (1, 18): (21, 10),
    (1, 19): (21, 10),
    (1, 20): (21, 10),
    (1, 21): (22, 10),
    (1, 22): (22, 11),
    (1, 23): (23, 11),
}


def oldest_runtime(target: Target) -> tuple[int, int] | None:
    """The oldest onnxruntime release the target's range admits, among those known above."""
    spec = SpecifierSet(target.runtime.onnxruntime)
    admitted = [v for v in sorted(ORT_SUPPORT) if Version(f"{v[0]}.{v[1]}.0") in spec]
    newest = max(ORT_SUPPORT)
    if not admitted and Version(f"{newest[0]}.{newest[1] + 1}.0") in spec:
        return None  # only releases newer than the table: they run everything it lists
    if not admitted:
        return min(ORT_SUPPORT)  # only releases older than the table: judge by the oldest known
    return admitted[0]


def check_runtime_support(path: Path, target: Target) -> None:
    """ConfigError naming the versions when the target's oldest onnxruntime cannot run ``path``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    release = oldest_runtime(target)
    if release is None:
        return
    max_opset, max_ir = ORT_SUPPORT[release]
    if opset > max_opset or model.ir_version > max_ir:
        raise ConfigError(
            f"{path.name} needs ONNX opset {opset} and IR version {model.ir_version}, but target "
            f"'{target.name}' admits onnxruntime {release[0]}.{release[1]} "
            f"({target.runtime.onnxruntime}), which runs opset <= {max_opset} and IR <= {max_ir}; "
            "raise the target's runtime.onnxruntime lower bound"
        )


def check_external_data(path: Path) -> None:
    """ModelError when a tensor's external data is absolute, escapes the model's dir, or is a link."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    root = path.parent.resolve()
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        pure = PurePosixPath(location.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or not location:
            raise ModelError(f"{path}: external data '{location}' lies outside the model's directory")
        data = path.parent / location
        if data.is_symlink():
            raise ModelError(f"{path}: external data '{location}' is a symlink; refused")
        if not data.resolve().is_relative_to(root):
            raise ModelError(f"{path}: external data '{location}' lies outside the model's directory")
