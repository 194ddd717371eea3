"""Bundle: the runnable directory (model, tokenizer, runtime, manifest) and its reproducible archive."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import tarfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from ..bench import report as bench_report
from ..catalog.config import Target
from ..errors import ConfigError
from ..graph import external
from ..runtime import RUNTIME_PACKAGE
from ..runtime.embedder import RUNTIME_CONFIG, EmbeddingConfig
from ..runtime.generator import GenerationConfig
from ..runtime.integrity import MANIFEST, bundle_files, sha256_file
from ..runtime.scorer import ScoringConfig
from ..runtime.tasks import Task

# 1980-01-01: the earliest time every archive format (zip included) can store.
DEFAULT_EPOCH = 315532800
# Written by finish() from the manifest; `edgepipe bench` rewrites them with new results.
DOCUMENTS = ("README.md", bench_report.BENCH_MD, bench_report.BENCH_SVG, MANIFEST)


def _runtime_modules() -> tuple[str, ...]:
    """Every module of the runtime package (subpackages too), as paths inside it; bundle_main.py
    becomes the bundle's own __main__.py instead."""
    found: list[str] = []

    def walk(node: Any, prefix: str) -> None:  # an importlib.resources Traversable
        for child in node.iterdir():
            if child.is_dir() and child.name != "__pycache__":
                walk(child, f"{prefix}{child.name}/")
            elif child.name.endswith(".py") and f"{prefix}{child.name}" != "bundle_main.py":
                found.append(f"{prefix}{child.name}")

    walk(resources.files("edgepipe.runtime"), "")
    return tuple(sorted(found))


RUNTIME_MODULES = _runtime_modules()


# onnxruntime's kernels and the tokenizer's ids decide the numbers the evaluation measured, so the
# bundle pins the versions that ran it. numpy only pools and normalises, and its wheels follow the
# device's Python (numpy 2.3+ has none for 3.10), so it keeps a range.
RANGES = {"numpy": ">=1.24,<3", "tokenizers": ">=0.15,<1"}
# What one task's runtime needs beyond those: a decoder's serve enforces JSON schemas and tool calls with
# llguidance (no requirements of its own; one abi3 wheel per platform, aarch64 included).
TASK_RANGES = {Task.GENERATION: {"llguidance": ">=1.6,<2"}}
PINNED = ("onnxruntime", "tokenizers")
# A decoder's chat template is rendered with jinja2 on the device (pure Python, one small C
# extension in MarkupSafe with wheels for every target); the build checked renders with this one.
CHAT_RANGE = {"jinja2": ">=3.1,<4"}
GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}


def gpu_target(target: Target) -> bool:
    return bool(GPU_PROVIDERS & set(target.runtime.execution_providers))


def _in_range(version: str, spec: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) in SpecifierSet(spec)
    except InvalidVersion:
        return False


def runtime_requirements(
    target: Target, evaluated: Mapping[str, str], onnxruntime: str | None = None, task: Task | None = None
) -> dict[str, str]:
    """Specifier per runtime package: the evaluated versions where the target's ranges allow them.

    ``onnxruntime`` overrides the evaluated onnxruntime (e.g. one an emulator can run); it must lie
    in the target's range. A GPU target keeps a range: its onnxruntime build comes from the vendor.
    A text-generation bundle also needs jinja2, pinned to the build's where in range.
    """
    ranges = {"onnxruntime": target.runtime.onnxruntime, **RANGES}
    if onnxruntime is not None and (gpu_target(target) or not _in_range(onnxruntime, ranges["onnxruntime"])):
        raise ConfigError(
            f"--runtime-version {onnxruntime}: target '{target.name}' runs onnxruntime"
            f"{ranges['onnxruntime']}" + (" from its vendor's build, not PyPI's" if gpu_target(target) else "")
        )
    specs = {**ranges, **TASK_RANGES.get(task, {})} if task is not None else dict(ranges)
    for name in PINNED:
        if name == "onnxruntime" and gpu_target(target):
            continue
        version = onnxruntime if name == "onnxruntime" and onnxruntime else evaluated.get(name, "")
        if _in_range(version, ranges[name]):
            specs[name] = f"=={version}"
    if task == Task.GENERATION:
        version = evaluated.get("jinja2", "")
        specs["jinja2"] = f"=={version}" if _in_range(version, CHAT_RANGE["jinja2"]) else CHAT_RANGE["jinja2"]
    return specs


def requirements(target: Target, specs: Mapping[str, str], evaluated: Mapping[str, str]) -> str:
    ran = ", ".join(f"{name} {evaluated.get(name)}" for name in PINNED)
    lines = [
        "# What the bundle needs on the device; nothing else (no torch, transformers or edgepipe).",
        f"# The build's evaluation ran on {ran}; '==' pins what ran (or --runtime-version).",
    ]
    if gpu_target(target):
        lines.append("# For the GPU, install NVIDIA's onnxruntime-gpu build for this device instead.")
    lines += [f"{name}{spec}" for name, spec in specs.items()]
    return "\n".join(lines) + "\n"


def speed(bench: dict[str, Any] | None) -> str:
    """The README's one-paragraph summary of the first measured shape."""
    if bench is None:
        return "Not measured at build time (built with --no-bench). On the device: `python . bench`."
    r = bench["results"][0]
    versus = (
        f"{r['speedup_vs_fp32']}x the fp32 model measured in the same run"
        if r["fp32"]
        else "no fp32 baseline in this run"
    )
    return (
        f"Latency {bench_report.where(bench)}: p50 {r['model']['p50_ms']} ms at batch "
        f"{r['batch_size']}, {r['seq_len']} tokens, {bench['threads']} threads; {versus}.\n"
        f"Every shape, load time and memory: {bench_report.BENCH_MD}. On the device: `python . bench`."
    )


def device_speed(measured: dict[str, Any] | None) -> str:
    """The README's line for a device's measurement (`edgepipe bench --remote/--import`)."""
    if not measured:
        return ""
    cpu = (measured.get("probe") or measured["machine"]).get("cpu")
    head = f"\nOn the device ({cpu}, onnxruntime {measured['onnxruntime']}, {measured['threads']} threads): "
    if measured.get("schema") == "edgepipe.bench/2":
        return head + generation_line(measured)
    r = measured["results"][0]
    return head + (
        f"p50 {r['model']['p50_ms']} ms, p95 {r['model'].get('p95_ms')} ms at batch "
        f"{r['batch_size']}, {r['seq_len']} tokens; peak RSS {measured['peak_rss_mb']} MB."
    )


def generation_line(measured: dict[str, Any]) -> str:
    """An edgepipe.bench/2 document's shortest context, in words."""
    r = measured["results"][0]
    return (
        f"context {r['context_len']}: time to first token {r['time_to_first_token_ms']} ms, "
        f"prefill {r['prefill_tokens_per_s']} tokens/s, decode {r['decode_tokens_per_s']} "
        f"tokens/s; peak RSS {measured['peak_rss_mb']} MB."
    )


def generation_speed(bench: dict[str, Any] | None) -> str:
    if bench is None:
        return "Not measured at build time (built with --no-bench)."
    if bench.get("schema") == "edgepipe.bench/2":  # `edgepipe bench` on the build host
        return (
            f"Measured on the {bench['measured_on']}, not on the device, with {bench['threads']} "
            f"threads: {generation_line(bench)}"
        )
    m, f = bench["model"], bench["fp32"]
    return (
        f"Measured on the {bench['measured_on']}, not on the device, with {bench['threads']} "
        f"threads: greedy, {bench['prompt_tokens']}-token prompt, {bench['new_tokens']} new tokens: "
        f"time to first token {m['time_to_first_token_ms']} ms, prefill "
        f"{m['prefill_tokens_per_s']} tokens/s, decode {m['decode_tokens_per_s']} tokens/s "
        f"({bench['decode_speedup_vs_fp32']}x the fp32 model's {f['decode_tokens_per_s']}), "
        f"peak RSS {m['peak_rss_mb']} MB (fp32: {f['peak_rss_mb']} MB)."
    )


def generation_readme(manifest: dict[str, Any], install: str) -> str:
    acc, target = manifest["accuracy"], manifest["target"]
    score = acc["model"]
    kl_bar = f", mean KL <= {acc['max_kl']}" if acc.get("max_kl") is not None else ""
    return f"""# {manifest["name"]}

{manifest["model"]["source"]["name"]} ({manifest["task"]}) built by edgepipe {manifest["versions"]["edgepipe"]}
for **{target["name"]}** ({target["description"]}) with profile **{manifest["profile"]["name"]}**.

## Run
```
{install}
python . generate "Once upon a time"             # greedy; --max-new-tokens, --temperature, --chat
python . serve --port 8080                       # POST /generate, GET /health, GET /manifest
python . verify                                  # every file against manifest.json
python . info
```
Only onnxruntime, numpy, tokenizers, jinja2 (the chat template) and llguidance (JSON output and tool calls in
`serve`) are needed on the device.

## Accuracy
Against the fp32 ONNX model over {score["positions"]} next-token positions of {score["n"]} texts:
top-1 agreement {score["agreement"]} (worst text {score["agreement_min_text"]}), mean
KL(fp32 || model) {score["mean_kl"]} nats (bar: agreement >= {acc["bar"]}{kl_bar}).
The fp32 export itself agrees with PyTorch on {acc["fp32_onnx"]["agreement"]} of the positions
(largest logit difference {acc["fp32_onnx"]["max_abs_logit_diff"]}).

## Speed
{generation_speed(manifest["bench"])}{device_speed(manifest.get("device_bench"))}
"""


def scoring_readme(manifest: dict[str, Any], install: str) -> str:
    """A classifier's or reranker's README: how to run it and how close it is to fp32."""
    acc, target, score = manifest["accuracy"], manifest["target"], manifest["accuracy"]["model"]
    if Task.parse(manifest["task"]) == Task.RERANKING:
        run = (
            'python . rerank "kitchen lights" "turn on the kitchen lights" "play some jazz"\n'
            "                                                 # one JSON line per document, best first\n"
            'python . serve --port 8080                       # POST /rerank {"query", "documents"}'
        )
        limit = acc.get("max_score_error")
        accuracy = (
            f"Against the fp32 PyTorch model over {score['n']} (query, document) pairs of "
            f"{score['queries']} queries: Spearman rank correlation of each query's documents "
            f"worst {score['min_spearman']}, mean {score['mean_spearman']}; largest score error "
            f"{score['max_score_error']} (bar: worst query >= {acc['bar']}"
            f"{f', score error <= {limit}' if limit is not None else ''})."
        )
    else:
        run = (
            'python . classify "turn on the kitchen lights"  # {"label", "score", "scores"} per text\n'
            'python . serve --port 8080                       # POST /classify {"texts": [...]}'
        )
        limit = acc.get("max_kl")
        accuracy = (
            f"Against the fp32 PyTorch model over {score['n']} texts: the same label for "
            f"{score['agreement']} of them, mean KL(fp32 || model) of the labels' probabilities "
            f"{score['mean_kl']} nats, largest probability difference {score['max_prob_error']} "
            f"(bar: agreement >= {acc['bar']}{f', mean KL <= {limit}' if limit is not None else ''})."
        )
    return f"""# {manifest["name"]}

{manifest["model"]["source"]["name"]} ({manifest["task"]}) built by edgepipe {manifest["versions"]["edgepipe"]}
for **{target["name"]}** ({target["description"]}) with profile **{manifest["profile"]["name"]}**.

## Run
```
{install}
{run}
python . selftest                                # the accuracy check, on this machine
python . verify                                  # every file against manifest.json
python . bench                                   # latency on this machine (--json: the schema)
```
Only onnxruntime, numpy and tokenizers are needed on the device.

## Accuracy
{accuracy}

## Speed
{speed(manifest["bench"])}{device_speed(manifest.get("device_bench"))}
"""


def licence_section(manifest: dict[str, Any]) -> str:
    """The README's licence: the id, where it was read, the files in licenses/, what it obliges."""
    licence = manifest.get("licence")
    if not licence:
        return ""
    if licence["expression"] is None:
        return "\n## Licence\nThe model declares no licence (NOASSERTION): find out its terms before you ship it.\n"
    said = f" (declared `{licence['declared']}` in its {licence['where']})" if licence.get("declared") else ""
    lines = [f"\n## Licence\nThe model is licensed under **{licence['expression']}**{said}."]
    if licence.get("url"):
        lines.append(f"Terms: {licence['url']}")
    if licence["files"]:
        lines.append("Its licence files travel with it: " + ", ".join(f"`{f}`" for f in licence["files"]) + ".")
    lines += [f"- {text}" for text in licence.get("obligations", [])]
    return "\n".join(lines) + "\n"


def readme(manifest: dict[str, Any]) -> str:
    return _readme(manifest) + licence_section(manifest)


def _readme(manifest: dict[str, Any]) -> str:
    acc, bench = manifest["accuracy"], manifest["bench"]
    target = manifest["target"]
    install = "pip install -r requirements.txt"
    if "wheels" in manifest:  # offline: the wheels for the device's platform ship in the bundle
        install = f"{manifest['wheels']['install']}   # offline"
    if Task.parse(manifest["task"]) == Task.GENERATION:
        return generation_readme(manifest, install)
    if Task.parse(manifest["task"]).is_head:
        return scoring_readme(manifest, install)
    return f"""# {manifest["name"]}

{manifest["model"]["source"]["name"]} ({manifest["task"]}) built by edgepipe {manifest["versions"]["edgepipe"]}
for **{target["name"]}** ({target["description"]}) with profile **{manifest["profile"]["name"]}**.

## Run
```
{install}
python . embed "turn on the kitchen lights"     # one JSON line {{"embedding": [...]}} per text
python . embed - < texts.txt                     # one text per line from stdin
python . serve --port 8080                       # POST /embed, GET /health, GET /manifest
python . verify                                  # every file against manifest.json
python . info
python . bench                                   # latency on this machine (--json: the schema)
```
Only onnxruntime, numpy and tokenizers are needed on the device.

## Accuracy
Cosine similarity to the fp32 PyTorch model over {acc["model"]["n"]} texts: min {acc["model"]["min"]},
p5 {acc["model"]["p5"]}, mean {acc["model"]["mean"]} (bar: {acc["metric"]} >= {acc["bar"]}).

## Speed
{speed(bench)}{device_speed(manifest.get("device_bench"))}
"""


def assemble(
    dest: Path,
    model: Path,
    tokenizer_dir: Path,
    runtime: EmbeddingConfig | GenerationConfig | ScoringConfig,
    requirements_txt: str,
    wheels: Path | None = None,
    *,
    task: str,
) -> None:
    """Write everything but the manifest and README into ``dest``; ``wheels``: a dir to copy."""
    (dest / "model").mkdir(parents=True)
    external.copy(model, dest / "model" / "model.onnx")  # with model.onnx.data, if it has one
    shutil.copytree(tokenizer_dir, dest / "tokenizer")
    pkg = dest / RUNTIME_PACKAGE
    pkg.mkdir()
    source = resources.files("edgepipe.runtime")
    for name in RUNTIME_MODULES:
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(source.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    (dest / "__main__.py").write_text(source.joinpath("bundle_main.py").read_text(encoding="utf-8"), encoding="utf-8")
    # Every runtime.json names its task first (a decoder's to_json() has it already).
    data = {"task": task, **runtime.to_json()}
    (dest / RUNTIME_CONFIG).write_text(json.dumps(data, indent=2) + "\n")
    (dest / "requirements.txt").write_text(requirements_txt)
    if wheels is not None:
        shutil.copytree(wheels, dest / "wheels")


def finish(dest: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write DOCUMENTS, then manifest.json naming every other file's sha256; return the manifest."""
    (dest / "README.md").write_text(readme(manifest), encoding="utf-8")
    # The BENCH documents render the embedding benchmark; a decoder's is in the README.
    measured = manifest["bench"] if Task.parse(manifest["task"]) != Task.GENERATION else None
    for name, text in (bench_report.documents(manifest["name"], measured) if measured else {}).items():
        (dest / name).write_text(text, encoding="utf-8")
    manifest = {
        **manifest,
        "files": {rel: sha256_file(path) for rel, path in bundle_files(dest).items()},
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return manifest


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else DEFAULT_EPOCH


def write_archive(src: Path, dst: Path) -> None:
    """A .tar.gz of ``src`` under its own name whose bytes depend only on the files' contents."""
    mtime = source_date_epoch()
    entries = sorted(p for p in src.rglob("*") if "__pycache__" not in p.parts)

    def add(tar: tarfile.TarFile, path: Path, arcname: str) -> None:
        info = tar.gettarinfo(str(path), arcname)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = mtime
        info.mode = 0o755 if info.isdir() else 0o644
        if info.isfile():
            with open(path, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)

    with (
        open(dst, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        add(tar, src, src.name)
        for path in entries:
            add(tar, path, f"{src.name}/{path.relative_to(src).as_posix()}")
