"""PNG/JPEG decoding off the event loop: one decoder thread per server process.

A PNG or JPEG may decode to up to --max-decoded-pixels (16 M by default): tens to hundreds
of milliseconds of work. On the event loop that would stall every other call of the
process meanwhile. Pillow releases the GIL while it decodes and resamples, so on a thread
of its own the loop keeps serving. One thread, not a pool: it bounds what decoding can take
to one core per process whatever clients send, and calls with encoded images queue for it
(their deadline still applies once they reach the batcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final, TypeVar

T = TypeVar("T")

DECODE_THREADS: Final = 1
# The decoder thread runs at a lower CPU priority than the loop and ONNX Runtime: on a busy
# machine a stream of large images then takes the CPU the other calls leave, not theirs
# (bench/decode_stall.py: with the default priority, a 4,000 x 4,000 PNG stream still
# doubled the others' p99 on two cores).
DECODE_NICENESS: Final = 10


def _lower_priority() -> None:
    with contextlib.suppress(OSError):  # where the platform refuses, decoding still works
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), DECODE_NICENESS)


_decoder = ThreadPoolExecutor(
    max_workers=DECODE_THREADS, thread_name_prefix="mnist-decode", initializer=_lower_priority
)


def decode_off_loop(work: Callable[[], T]) -> asyncio.Future[T]:
    """`work()` (a decode) on the decoder thread; its result or error on the running loop."""
    return asyncio.get_running_loop().run_in_executor(_decoder, work)
