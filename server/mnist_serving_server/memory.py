"""Giving memory back after a burst: glibc keeps what large requests freed (measured: six
15 MB ModelInfer calls at a time took a worker from 131 MB to 587 MB of RSS, and it stayed
there; malloc_trim(0) gave 280 MB of it back). `MemoryTrimmer` watches the process's RSS
and calls malloc_trim once the RSS has grown by TRIM_GROWTH_BYTES since the last trim and
stopped growing (the burst is over: trimming during one would only make the allocator take
the memory back from the kernel again). No-op where glibc's malloc_trim is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
from typing import Final

logger = logging.getLogger(__name__)

CHECK_INTERVAL_S: Final = 2.0
TRIM_GROWTH_BYTES: Final = 64 * 1024 * 1024
PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")
STATM: Final = "/proc/self/statm"


def rss_bytes() -> int | None:
    """This process's resident set size (Linux), None where /proc is absent."""
    try:
        with open(STATM, encoding="ascii") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None).malloc_trim
    return None


class MemoryTrimmer:
    """A task that trims the heap after bursts (start(), then stop())."""

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._task: asyncio.Task[None] | None = None
        self.trims = 0

    def start(self) -> None:
        if self._trim is not None and rss_bytes() is not None:
            self._task = asyncio.create_task(self._run(), name="mnist-memory-trim")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        baseline = previous = rss_bytes() or 0
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            current = rss_bytes() or 0
            if current - baseline >= TRIM_GROWTH_BYTES and current <= previous:
                # Large requests can stay pinned by reference cycles (an error's traceback
                # holds the frame that holds the request) until a full collection, which
                # a quiet server may not run for a long time: collect, then trim.
                gc.collect()
                await asyncio.to_thread(self._trim_now)
                trimmed = rss_bytes() or 0
                logger.info(
                    "memory trimmed after a burst",
                    extra={"rss_before_mb": current >> 20, "rss_after_mb": trimmed >> 20},
                )
                current = baseline = trimmed
            previous = current

    def _trim_now(self) -> None:
        if self._trim is not None:
            self._trim(0)
            self.trims += 1
