"""Percentile maths and load splitting of the benchmark harness."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import percentile, split_evenly, summarize_latencies

LATENCIES = st.lists(
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False), min_size=1, max_size=500
)


def test_nearest_rank_on_one_to_hundred() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 0.5) == 1.0


def test_nearest_rank_is_an_observed_sample_not_an_interpolation() -> None:
    # Interpolation would give 1.5 for the median of [1, 2]; nearest rank gives 1.
    assert percentile([1.0, 2.0], 50) == 1.0
    assert percentile([1.0, 2.0], 51) == 2.0
    # p99 of 10 samples is the largest: a small run has no finer tail.
    assert percentile([float(v) for v in range(10)], 99) == 9.0


@pytest.mark.parametrize("p", [0.0, -1.0, 100.5])
def test_percentile_rejects_out_of_range(p: float) -> None:
    with pytest.raises(ValueError, match="percentile must be in"):
        percentile([1.0], p)


def test_percentile_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_summary_in_milliseconds() -> None:
    summary = summarize_latencies([0.004, 0.001, 0.002, 0.003])
    assert summary is not None
    assert summary.count == 4
    assert summary.p50_ms == pytest.approx(2.0)
    assert summary.p99_ms == pytest.approx(4.0)
    assert summary.max_ms == pytest.approx(4.0)
    assert summary.mean_ms == pytest.approx(2.5)


def test_summary_of_nothing_is_none() -> None:
    assert summarize_latencies([]) is None


@given(LATENCIES)
def test_summary_percentiles_are_ordered_samples(latencies: list[float]) -> None:
    summary = summarize_latencies(latencies)
    assert summary is not None
    assert min(latencies) * 1000 <= summary.p50_ms <= summary.p95_ms
    assert summary.p95_ms <= summary.p99_ms <= summary.max_ms == max(latencies) * 1000
    samples_ms = {value * 1000 for value in latencies}
    assert {summary.p50_ms, summary.p95_ms, summary.p99_ms} <= samples_ms
    # At least p% of the samples lie at or below the p-th percentile.
    at_or_below = sum(1 for v in latencies if v * 1000 <= summary.p99_ms)
    assert at_or_below >= math.ceil(0.99 * len(latencies))


@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=64))
def test_split_evenly_sums_and_balances(total: int, parts: int) -> None:
    shares = split_evenly(total, parts)
    assert len(shares) == parts
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1


def test_split_evenly_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="parts"):
        split_evenly(4, 0)
    with pytest.raises(ValueError, match="total"):
        split_evenly(-1, 2)
