"""The tables the CLI prints (built here, printed only by cli.py)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..catalog.config import Profile, Target
from ..catalog.families import Family


def rows_table(rows: list[dict[str, Any]], title: str) -> Table:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    return table


def targets_table(found: list[Target]) -> Table:
    table = Table(
        "name",
        "arch",
        "cores",
        "ISA",
        "providers",
        "default profile",
        "generation profile",
        "description",
    )
    for t in found:
        table.add_row(
            t.name,
            t.platform.arch,
            str(t.cpu.cores),
            ",".join(t.cpu.isa),
            ",".join(p.removesuffix("ExecutionProvider") for p in t.runtime.execution_providers),
            t.default_profile,
            t.default_generation_profile or "-",
            t.description,
        )
    return table


def models_table(found: list[Family]) -> Table:
    table = Table("model_type", "family", "tasks", "attention", "e.g.")
    for f in found:
        table.add_row(f.model_type, f.name, f.task_names(), f.attention(), ", ".join(f.examples))
    return table


def profiles_table(found: list[Profile]) -> Table:
    table = Table("name", "method", "accuracy bar", "tasks", "description")
    for p in found:
        bar = ", ".join(
            f"{p.bar(kind).metric} >= {p.bar(kind).min}"
            + (f", KL <= {p.bar(kind).max_kl}" if p.bar(kind).max_kl else "")
            + (f", error <= {p.bar(kind).max_score_error}" if p.bar(kind).max_score_error else "")
            for kind in p.task_kinds
        )
        table.add_row(p.name, p.method, bar, ",".join(p.task_kinds), p.description)
    return table


def bench_table(result: dict[str, Any]) -> Table:
    table = Table(
        "shape",
        "runs",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "mean ms",
        "stdev ms",
        "items/s",
        "fp32 p50 ms",
        "speed-up",
    )
    for r in result["results"]:
        s, fp32 = r["model"], r["fp32"]
        runs = str(s["runs"]) if r["complete"] else f"[yellow]{s['runs']}/{result['runs']}[/yellow]"
        table.add_row(
            f"{r['batch_size']} x {r['seq_len']}",
            runs,
            *(str(s[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms")),
            str(s["items_per_s"]),
            str(fp32["p50_ms"]) if fp32 else "-",
            f"{r['speedup_vs_fp32']}x" if fp32 else "-",
        )
    return table
