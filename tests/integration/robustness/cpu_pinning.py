"""Keep the load client off the server's CPUs (Linux), so that client-side latencies
measure the server rather than the two processes fighting for the same cores.

    with cpus_apart() as cpus:
        cpus.for_server()          # a child started now inherits the server's CPUs
        server = start_server_process(...)
        cpus.for_client()          # this process moves to the other CPUs
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

MIN_CPUS_TO_SPLIT = 2


def pin_this_process(cpus: set[int]) -> None:
    """Every thread of this process to `cpus` (threads started later inherit it)."""
    for thread_id in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(thread_id), cpus)
        except ProcessLookupError:  # the thread ended meanwhile
            continue


class CpuSplit:
    """The first half of this process's CPUs for the server, the rest for the client."""

    def __init__(self, available: set[int]) -> None:
        ordered = sorted(available)
        half = len(ordered) // 2
        self.available = available
        self.active = len(ordered) >= MIN_CPUS_TO_SPLIT
        self.server = set(ordered[:half]) if self.active else available
        self.client = set(ordered[half:]) if self.active else available

    def for_server(self) -> None:
        if self.active:
            pin_this_process(self.server)

    def for_client(self) -> None:
        if self.active:
            pin_this_process(self.client)

    def restore(self) -> None:
        pin_this_process(self.available)


@contextmanager
def cpus_apart() -> Iterator[CpuSplit]:
    split = CpuSplit(os.sched_getaffinity(0))
    try:
        yield split
    finally:
        split.restore()
