"""Trends over a soak run (what a process holds is read by tests.support.processes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def slope_per_minute(times_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of `values` against time, per minute."""
    if len(times_s) < 2:
        raise ValueError("a slope needs at least two samples")
    per_second = float(np.polyfit(np.asarray(times_s), np.asarray(values, dtype=float), 1)[0])
    return per_second * 60.0
