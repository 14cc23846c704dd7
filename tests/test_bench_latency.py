"""The benchmark's latency figures: the warm-up split and the windows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from bench_lib import latency_figures

START_MS = 1_700_000_000_000.0


def test_warm_up_is_left_out_of_the_percentiles_and_kept_in_the_whole_run() -> None:
    # The first 2 s are slow (300 ms), the rest fast (10 ms; one 40 ms).
    samples = [(START_MS + i * 100, 300.0) for i in range(20)]
    samples += [(START_MS + 2000 + i * 100, 10.0) for i in range(99)]
    samples.append((START_MS + 12_000, 40.0))

    figures = latency_figures(samples, warmup_s=2.0)

    assert figures["warmup_s"] == 2.0
    assert figures["steady_samples"] == 100
    assert figures["p50_ms"] == 10.0
    assert figures["p99_ms"] == 10.0
    assert figures["max_ms"] == 40.0
    assert figures["all_p99_ms"] == 300.0
    assert figures["all_max_ms"] == 300.0
    # 5 s windows of send time: [0, 5) holds the slow start, [10, 15) the 40.
    assert figures["p99_by_window_ms"] == [300.0, 10.0, 40.0]


def test_no_warm_up_gives_the_whole_run() -> None:
    samples = [(START_MS + i, float(i)) for i in range(1, 101)]
    figures = latency_figures(samples, warmup_s=0.0)
    assert figures["p50_ms"] == figures["all_p50_ms"] == 50.0
    assert figures["p99_ms"] == figures["all_p99_ms"] == 99.0


def test_a_run_shorter_than_its_warm_up_is_refused() -> None:
    with pytest.raises(ValueError, match="warm-up"):
        latency_figures([(START_MS, 5.0), (START_MS + 500, 5.0)], warmup_s=1.0)
    with pytest.raises(ValueError, match="no latency samples"):
        latency_figures([], warmup_s=1.0)
