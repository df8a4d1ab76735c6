"""Reading CPU time from /proc for the server-CPU-per-request column."""

from __future__ import annotations

import os
import sys
import time

import pytest

from bench.processes import CLOCK_TICKS, parse_stat, process_tree_cpu_seconds

BUSY_S = 0.2


def test_parse_stat_survives_odd_command_names() -> None:
    # Fields after the name: state ppid ... utime (14th field) stime (15th).
    rest = "S 42 " + " ".join(["0"] * 9) + f" {3 * CLOCK_TICKS} {CLOCK_TICKS} 0 0"
    parent, seconds = parse_stat(f"1234 (py thon) (x)) {rest}")
    assert parent == 42
    assert seconds == pytest.approx(4.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_own_cpu_time_grows_with_work() -> None:
    before = process_tree_cpu_seconds(os.getpid())
    assert before is not None
    end = time.process_time() + BUSY_S
    while time.process_time() < end:
        pass
    after = process_tree_cpu_seconds(os.getpid())
    assert after is not None
    assert after > before


def test_unknown_pid_gives_none() -> None:
    assert process_tree_cpu_seconds(2**22 + 12345) is None
