"""Latency statistics: nearest-rank percentiles over the samples of one scenario.

Nearest-rank (the smallest sample with at least p% of the samples at or below it) is used
rather than interpolation so every reported percentile is a latency that was observed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

MS_PER_S = 1000.0
PERCENTILES = (50.0, 95.0, 99.0)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile `p` (0 < p <= 100) of values sorted ascending."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0.0 < p <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    rank = math.ceil(p / 100.0 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True)
class LatencySummary:
    """Latency of the requests of one scenario, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize_latencies(latencies_s: Sequence[float]) -> LatencySummary | None:
    """Summarize latencies given in seconds; None when there are none."""
    if not latencies_s:
        return None
    ordered = sorted(latencies_s)
    p50, p95, p99 = (percentile(ordered, p) * MS_PER_S for p in PERCENTILES)
    return LatencySummary(
        count=len(ordered),
        mean_ms=math.fsum(ordered) / len(ordered) * MS_PER_S,
        p50_ms=p50,
        p95_ms=p95,
        p99_ms=p99,
        max_ms=ordered[-1] * MS_PER_S,
    )


def split_evenly(total: int, parts: int) -> list[int]:
    """Split `total` into `parts` non-negative integers differing by at most one."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]
