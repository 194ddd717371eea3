"""The statistics arithmetic, on recorded timings (never on live speed)."""

import numpy as np
import pytest

from edgepipe.runtime import encoder_bench, timing

RECORDED = [12.0, 10.0, 11.0, 30.0, 10.5, 10.2, 9.8, 10.1, 10.4, 10.9]
FP32 = [20.0, 21.0, 19.5, 40.0, 20.5, 20.2, 19.8, 20.1, 20.4, 20.9]


def test_summary_matches_numpy():
    s = timing.summarize(RECORDED, batch_size=8)
    assert s["runs"] == 10
    for q in (50, 90, 99):
        assert s[f"p{q}_ms"] == pytest.approx(np.percentile(RECORDED, q), abs=1e-3)
    assert s["mean_ms"] == pytest.approx(np.mean(RECORDED), abs=1e-3)
    assert s["stdev_ms"] == pytest.approx(np.std(RECORDED, ddof=1), abs=1e-3)
    # Throughput: items over total time, i.e. batch size over mean latency.
    assert s["items_per_s"] == pytest.approx(8 * len(RECORDED) / (sum(RECORDED) / 1000), abs=0.01)


def test_single_run_has_zero_stdev():
    assert timing.summarize([5.0]) == {
        "runs": 1,
        "p50_ms": 5.0,
        "p90_ms": 5.0,
        "p95_ms": 5.0,
        "p99_ms": 5.0,
        "mean_ms": 5.0,
        "stdev_ms": 0.0,
        "items_per_s": 200.0,
    }


def test_shape_result_speedup_is_the_ratio_of_p50s():
    r = encoder_bench.shape_result(4, 16, {"model": RECORDED, "fp32": FP32}, runs=10)
    assert r["complete"] and (r["batch_size"], r["seq_len"]) == (4, 16)
    assert r["speedup_vs_fp32"] == pytest.approx(np.median(FP32) / np.median(RECORDED), abs=1e-3)
    assert r["fp32"]["items_per_s"] == pytest.approx(4000 / np.mean(FP32), abs=0.01)


def test_shape_result_without_baseline_or_all_runs():
    r = encoder_bench.shape_result(1, 16, {"model": RECORDED[:3]}, runs=10)
    assert r["fp32"] is None and r["speedup_vs_fp32"] is None
    assert not r["complete"] and r["model"]["runs"] == 3


def test_interleaved_alternates_calls():
    order: list[str] = []
    done: list[int] = []
    times = timing.interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 3, 1, progress=done.append
    )
    assert order == ["a", "b"] * 4
    assert [len(v) for v in times.values()] == [3, 3]
    assert all(t >= 0 for v in times.values() for t in v)
    assert done == [1, 2, 3]


def test_interleaved_stops_at_the_time_limit_after_one_run():
    import time

    times = timing.interleaved({"a": lambda: time.sleep(0.01)}, 1000, 5, max_seconds=0.03)
    assert 1 <= len(times["a"]) < 10


@pytest.mark.parametrize(("text", "expected"), [("1", (1,)), ("1,8", (1, 8)), (" 8, 1 ,8", (8, 1))])
def test_parse_sizes(text, expected):
    assert encoder_bench.parse_sizes(text, "--batch-sizes") == expected


@pytest.mark.parametrize("text", ["", "0", "1,x", "-2"])
def test_parse_sizes_refuses(text):
    with pytest.raises(encoder_bench.ShapeError, match="--seq-lens must be"):
        encoder_bench.parse_sizes(text, "--seq-lens")


def test_host_info_names_cpu_and_features():
    info = timing.host_info()
    assert info["cpu"] and info["cores"] >= 1
    assert set(info["isa"]) <= set(timing.FEATURES)
    assert timing.peak_rss_mb() > 1
