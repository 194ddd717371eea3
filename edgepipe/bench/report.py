"""A benchmark result (the edgepipe.bench/1 document) as a bundle's BENCH.md and its SVG chart."""

from __future__ import annotations

from typing import Any
from xml.sax.saxutils import escape

BENCH_MD = "BENCH.md"
BENCH_SVG = "bench.svg"


def where(bench: dict[str, Any]) -> str:
    """Who measured it on what, in words: host-measured numbers never pass for the device's."""
    machine, target = bench["machine"], bench["target"]
    cpu = f"{machine['cpu']}, {machine['machine']}, ISA: {' '.join(machine['isa']) or 'none listed'}"
    if bench["measured_on"] == "build host":
        return f"measured on the build host ({cpu}), not on the target device ({target['name']})"
    arch = "the target's arch" if bench["machine_matches_target_arch"] else f"not the target's arch ({target['arch']})"
    return f"measured by the bundle runtime on {cpu}; {arch}"


def markdown(name: str, bench: dict[str, Any]) -> str:
    """BENCH.md: every statistic, the models' load cost, memory, and how to rerun it."""
    rows = []
    for r in bench["results"]:
        s, fp32 = r["model"], r["fp32"]
        rows.append(
            f"| {r['batch_size']} | {r['seq_len']} | {s['runs']} | {s['p50_ms']} | {s['p90_ms']} "
            f"| {s['p99_ms']} | {s['mean_ms']} | {s['stdev_ms']} | {s['items_per_s']} "
            f"| {fp32['p50_ms'] if fp32 else '-'} "
            f"| {str(r['speedup_vs_fp32']) + 'x' if fp32 else '-'} |"
        )
    models = [
        f"| {label} | `{m['path']}` | {m['size_bytes'] / 1e6:.1f} | {m['load_ms']} | {m['first_inference_ms']} |"
        for label, m in bench["models"].items()
        if m
    ]
    baseline = (
        "the fp32 model timed in the same run, interleaved run by run"
        if bench["models"]["fp32"]
        else "no fp32 baseline in this run"
    )
    short = (
        ""
        if bench["complete"]
        else (
            f"\n**Incomplete:** the {bench['max_seconds']} s limit stopped some shapes before "
            f"{bench['runs']} runs; the runs column says how many were timed.\n"
        )
    )
    return f"""# Benchmark: {name}

Latency {where(bench)}.

- onnxruntime {bench["onnxruntime"]}, {bench["provider"]}; {bench["threads"]} intra-op threads
  (target: {bench["target_threads"]}), {bench["inter_op_threads"]} inter-op
- {bench["runs"]} timed runs per shape after {bench["warmup"]} warm-up runs; {baseline}
- throughput is batch size over mean latency
{short}
| batch | tokens | runs | p50 ms | p90 ms | p99 ms | mean ms | stdev ms | items/s | fp32 p50 ms | speed-up |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

![p50 latency per shape, whiskers to p99]({BENCH_SVG})

| model | file | size MB | session load ms | first inference ms |
|---|---|---|---|---|
{chr(10).join(models)}

Peak resident memory of the benchmarking process: {bench["peak_rss_mb"]} MB (every model above
loaded). Session load time is with the file most likely in the OS page cache.

On the device: `python . bench --json` runs this same benchmark and prints the same schema
(`{bench["schema"]}`); `--baseline-model FILE` adds an fp32 model beside it.
"""


def svg(bench: dict[str, Any]) -> str:
    """Horizontal bars of p50 per shape and model, whiskers from p50 to p99; no plotting library."""
    bars = [
        (f"{r['batch_size']} x {r['seq_len']} tokens" if i == 0 else "", label, r[label])
        for r in bench["results"]
        for i, label in enumerate(("model", "fp32"))
        if r[label]
    ]
    left, width, row, top = 170, 640, 22, 40
    scale = (width - left - 90) / max(s["p99_ms"] for _, _, s in bars)
    height = top + row * len(bars) + 30
    colors = {"model": "#2b7bba", "fp32": "#a0a0a0"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="10" y="20" font-size="14">Latency in ms, batch x tokens: p50 bar, p99 '
        f"whisker ({escape(bench['measured_on'])})</text>",
    ]
    for i, (text, label, s) in enumerate(bars):
        y = top + i * row
        p50, p99 = s["p50_ms"] * scale, s["p99_ms"] * scale
        parts += [
            f'<text x="10" y="{y + 14}">{escape(text)}</text>',
            f'<text x="{left - 40}" y="{y + 14}" fill="#555">{label}</text>',
            f'<rect x="{left}" y="{y + 3}" width="{p50:.1f}" height="{row - 8}" fill="{colors[label]}"/>',
            f'<line x1="{left + p50:.1f}" y1="{y + row / 2 - 1}" x2="{left + p99:.1f}" '
            f'y2="{y + row / 2 - 1}" stroke="#333"/>',
            f'<line x1="{left + p99:.1f}" y1="{y + 6}" x2="{left + p99:.1f}" y2="{y + row - 8}" stroke="#333"/>',
            f'<text x="{left + p99 + 6:.1f}" y="{y + 14}">{s["p50_ms"]}</text>',
        ]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def documents(name: str, bench: dict[str, Any]) -> dict[str, str]:
    """The files a bundle carries for its benchmark, by name."""
    return {BENCH_MD: markdown(name, bench), BENCH_SVG: svg(bench)}
