"""Bounded waits for state that another task, thread or process settles."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

WAIT_TIMEOUT_S = 30.0
POLL_S = 0.01
THREAD_POLL_S = 0.05


async def wait_until(
    condition: Callable[[], bool],
    what: str = "a condition",
    timeout_s: float = WAIT_TIMEOUT_S,
    poll_s: float = POLL_S,
) -> None:
    """Poll `condition` (cheap state, e.g. a queue depth) on the event loop until it holds.

    Raises AssertionError naming `what` after `timeout_s`. The server offers no event for
    most of what tests wait on ("n images queued"); a bounded poll is enough.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(poll_s)


def wait_for(
    condition: Callable[[], T | None],
    timeout_s: float = WAIT_TIMEOUT_S,
    what: str = "a condition",
    poll_s: float = THREAD_POLL_S,
) -> T:
    """Call `condition` (blocking) until it returns something other than None; return that.

    Raises TimeoutError naming `what` after `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)
