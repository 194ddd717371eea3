"""Host-side benchmarking: a bundle's fp32 baseline, and measurements in a process of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..cache import StageCache, default_dir
from ..errors import ConfigError, ModelError, StageError, VerifyError
from ..runtime import encoder_bench, probe
from .budgets import is_generation, manifest_of

MEASURED_ON = "build host"


def find_baseline(manifest: dict[str, Any], store: StageCache) -> Path | None:
    """The fp32 export this bundle was built from, if the stage cache still holds it."""
    export = manifest.get("stages", {}).get("export", {})
    digest = export.get("outputs", {}).get("model.onnx")
    return store.find_output("export", "model.onnx", digest) if digest else None


def default_baseline(root: Path) -> tuple[Path | None, str, str | None]:
    """The baseline when none is given: the bundle's fp32 export from the stage cache. Returns the
    file (None when gone), how the result names it, and a warning for the user when it is gone."""
    store = StageCache(default_dir())
    found = find_baseline(manifest_of(root), store)
    warning = None
    if found is None:
        warning = (
            f"no fp32 baseline: the export this bundle was built from is not in the stage "
            f"cache ({store.root}); measuring the bundle's model alone (pass --baseline-model "
            "FILE to compare)"
        )
    return found, "export/model.onnx (stage cache)", warning


def run_isolated(
    request: dict[str, Any],
    progress: encoder_bench.Progress | None = None,
    module: str = "edgepipe.runtime.encoder_bench",
) -> dict[str, Any]:
    """Run a measure request in a fresh Python process (``python -m module``, the embedding
    benchmark by default) that imports only the runtime.

    Nothing this process loaded (torch after the evaluate stage, rich, its memory) is then in the
    process being timed, and its peak RSS is the model's process alone, as on the device.
    """
    # The result goes to a file: a pipe could fill up while stderr is still being read.
    with tempfile.TemporaryFile("w+", encoding="utf-8") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", module],
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": _package_root(os.environ.get("PYTHONPATH"))},
        )
        assert proc.stdin is not None and proc.stderr is not None
        errors = []
        try:
            proc.stdin.write(json.dumps(request))
            proc.stdin.close()
            for line in proc.stderr:
                word, _, rest = line.partition(" ")
                if word != "progress":
                    errors.append(line.rstrip())
                elif progress is not None:
                    done, total = rest.split()
                    progress(int(done), int(total))
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stdout.seek(0)
        output = stdout.read()
    message = next((e.removeprefix("error: ") for e in errors if e.startswith("error: ")), None)
    if code == encoder_bench.EXIT_LOAD and message:
        raise ModelError(message)
    if code == encoder_bench.EXIT_SHAPE and message:
        raise ConfigError(message)
    if code != 0:
        last = errors[-1] if errors else f"exit status {code}"
        raise StageError(f"the benchmark process failed: {last}")
    result: dict[str, Any] = json.loads(output)
    return result


def _package_root(pythonpath: str | None) -> str:
    """PYTHONPATH with the directory holding this edgepipe first, so the child imports the same."""
    root = str(Path(__file__).resolve().parent.parent)
    return os.pathsep.join([root, pythonpath] if pythonpath else [root])


def run(
    root: Path,
    settings: encoder_bench.BenchSettings,
    baseline: Path | None,
    progress: encoder_bench.Progress | None = None,
    baseline_shown: str | None = None,
) -> dict[str, Any]:
    """The edgepipe.bench/1 document for the bundle at ``root`` (a text-generation bundle's:
    edgepipe.bench/2), labelled as host-measured."""
    if is_generation(manifest_of(root)):  # measured alone: no fp32 baseline
        request = {
            "root": str(root),
            "settings": {"runs": settings.runs, "warmup": settings.warmup, "threads": settings.threads},
            "measured_on": MEASURED_ON,
        }
        result = run_isolated(request, module="edgepipe.runtime.generation_bench")
        return {**result, "probe": probe.probe()}
    try:
        request = encoder_bench.bundle_request(
            root,
            settings,
            measured_on=MEASURED_ON,
            baseline=baseline,
            baseline_shown=baseline_shown,
        )
    except ValueError as exc:  # read_manifest: not a bundle, or an unreadable manifest
        raise VerifyError(str(exc)) from None
    except (OSError, TypeError) as exc:  # runtime.json missing or malformed
        raise VerifyError(f"{root}: not a runnable edgepipe bundle ({exc})") from None
    # The machine's probe, as `python BUNDLE bench` adds it on the device.
    return {**run_isolated(request, progress), "probe": probe.probe()}
