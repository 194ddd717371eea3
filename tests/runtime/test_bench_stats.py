"""The statistics arithmetic, on recorded timings (never on live speed)."""

import numpy as np
import pytest

from edgepipe.runtime import bench

RECORDED = [12.0, 10.0, 11.0, 30.0, 10.5, 10.2, 9.8, 10.1, 10.4, 10.9]


def test_summary_matches_numpy():
    s = bench.summarize(RECORDED)
    assert s["runs"] == 10
    for q in (50, 90, 99):
        assert s[f"p{q}_ms"] == pytest.approx(np.percentile(RECORDED, q), abs=1e-3)
    assert s["mean_ms"] == pytest.approx(np.mean(RECORDED), abs=1e-3)
    assert s["stdev_ms"] == pytest.approx(np.std(RECORDED, ddof=1), abs=1e-3)


def test_single_run_has_zero_stdev():
    assert bench.summarize([5.0]) == {
        "runs": 1, "p50_ms": 5.0, "p90_ms": 5.0, "p99_ms": 5.0, "mean_ms": 5.0, "stdev_ms": 0.0
    }  # fmt: skip


def test_interleaved_alternates_calls():
    order: list[str] = []
    times = bench.interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, 1
    )
    assert order == ["a", "b"] * 4
    assert [len(v) for v in times.values()] == [3, 3]
    assert all(t >= 0 for v in times.values() for t in v)


def test_host_info_names_cpu_and_features():
    info = bench.host_info()
    assert info["cpu"] and info["cores"] >= 1
    assert set(info["isa"]) <= set(bench.FEATURES)
