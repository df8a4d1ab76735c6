"""What a process holds, read from /proc (Linux): resident memory and open descriptors."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

BYTES_PER_KIB = 1024
BYTES_PER_MB = 1_000_000


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * BYTES_PER_KIB
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_minute(times_s: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of `values` against time, per minute."""
    if len(times_s) < 2:
        raise ValueError("a slope needs at least two samples")
    per_second = float(np.polyfit(np.asarray(times_s), np.asarray(values, dtype=float), 1)[0])
    return per_second * 60.0
