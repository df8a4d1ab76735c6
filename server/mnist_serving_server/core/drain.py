"""Stopping without dropping a call: the phases, timings and message both fronts share.

Each front stops in the same order, in its own transport's terms (the gRPC front with
grpc_api/drain_gate.py, the HTTP front in http_api/front.py):

1. new work is refused with SHUTTING_DOWN (gRPC UNAVAILABLE, HTTP 503 + Connection: close):
   nothing of it was done, so the caller may safely retry elsewhere;
2. the work in flight finishes, within the grace period;
3. `wait_quiet`: nothing has arrived for QUIET_S (at most QUIET_LIMIT_S). A client that
   ignores health may still be sending; what reaches a connection being closed is lost in
   transit (CANCELLED, or a reset), never refused, so the front waits for a pause first;
4. the connections close.

Times are the running loop's clock (`loop.time()`), which both fronts record arrivals in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

SHUTTING_DOWN: Final = "the server is shutting down; retry on another replica"
"""What a call refused while stopping is told, on every transport."""
QUIET_S: Final = 0.1
"""Phase 3 ends once nothing has arrived for this long..."""
QUIET_LIMIT_S: Final = 2.0
"""...or after this long at most (and never past the grace period)."""
POLL_S: Final = 0.02
"""How often a drain re-checks a condition nothing signals (a counter, uvicorn's
connections)."""


async def wait_quiet(
    last_arrival: Callable[[], float],
    give_up: float,
    *,
    settled: Callable[[], bool] | None = None,
) -> bool:
    """Until nothing has arrived for QUIET_S since `last_arrival()`, or `settled()` holds.

    At most QUIET_LIMIT_S, and never past `give_up` (loop time: the end of the grace
    period); False when that limit came first. Without `settled` it sleeps exactly until
    the quiet period can be over; with it, it re-checks every POLL_S, since nothing
    signals it.
    """
    loop = asyncio.get_running_loop()
    deadline = min(give_up, loop.time() + QUIET_LIMIT_S)
    while True:
        if settled is not None and settled():
            return True
        now = loop.time()
        quiet_at = last_arrival() + QUIET_S
        if now >= quiet_at:
            return True
        if now >= deadline:
            return False
        wake = min(quiet_at, deadline)
        if settled is not None:
            wake = min(wake, now + POLL_S)
        await asyncio.sleep(wake - now)
