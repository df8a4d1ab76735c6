"""Shutting down without cancelling a call: refuse at the door, hold the refusals, then stop.

gRPC's own `server.stop(grace)` cancels every call the transport has accepted but the
server has not yet handed to a handler, and every stream that arrives before the client
has read the GOAWAY: their callers see CANCELLED, which nobody retries and which does not
say whether the work was done. Callers that ignore health keep sending such calls until the
very end, so the gRPC front stops in this order (grpc_api/front.py `GrpcFront.stop`, the
phases of core/drain.py):

1. `close()`: every new call is answered UNAVAILABLE (core.drain.SHUTTING_DOWN, safe to
   retry), but only later: its handler *holds* it (`refuse`). A caller waiting for its
   answer sends nothing else, so the flow of new calls dries up.
2. `wait_idle()`: the calls accepted before (the real work) finish.
3. `core.drain.wait_quiet(gate.last_arrival, ...)`: no new call has arrived for a while;
   nothing is left in transit.
4. `server.stop(grace)` starts: the GOAWAY goes out, the listener closes.
5. `release()`: the held calls get their UNAVAILABLE. The callers' next calls find the
   connection gone and fail UNAVAILABLE on the client side.

A held call is answered before its deadline runs out whatever happens (HOLD_MARGIN_S),
and after at most HOLD_LIMIT_S (a long stream still finishing must not keep refusals
waiting for the whole grace period; a caller answered early simply comes back and is
held again).
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from grpc import aio

# A held call is answered this long before its deadline, so it ends UNAVAILABLE, not
# DEADLINE_EXCEEDED.
HOLD_MARGIN_S: Final = 0.05
# The longest a refusal is held.
HOLD_LIMIT_S: Final = 1.0


class DrainGate:
    """Counts the calls being handled; after `close()`, refuses new ones (see the module)."""

    __slots__ = ("_closed", "_idle", "_in_flight", "_last_arrival", "_released")

    def __init__(self) -> None:
        self._closed = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._released = asyncio.Event()
        self._last_arrival = 0.0

    @property
    def closed(self) -> bool:
        return self._closed

    def last_arrival(self) -> float:
        """Loop time of the last call refused (or of `close()`, if none came since)."""
        return self._last_arrival

    @property
    def in_flight(self) -> int:
        """Calls admitted and not finished (held refusals are not counted)."""
        return self._in_flight

    def enter(self) -> None:
        """A call is admitted (only while open; callers check `closed` first)."""
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def close(self) -> None:
        """From now on new calls are refused (held until `release()`)."""
        self._closed = True
        self._last_arrival = asyncio.get_running_loop().time()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Until every admitted call has finished; False if `timeout_s` ran out first."""
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def release(self) -> None:
        """Answer every held call (and every later one) at once."""
        self._closed = True
        self._released.set()

    async def refuse(self, context: aio.ServicerContext[Any, Any]) -> None:
        """Hold this call until `release()` (or the hold limit, or just before its deadline);
        the caller then answers it UNAVAILABLE (core.drain.SHUTTING_DOWN)."""
        self._last_arrival = asyncio.get_running_loop().time()
        if not self._released.is_set():
            remaining = context.time_remaining()
            hold_s = HOLD_LIMIT_S
            if remaining is not None:
                hold_s = max(min(hold_s, remaining - HOLD_MARGIN_S), 0.0)
            try:
                async with asyncio.timeout(hold_s):
                    await self._released.wait()
            except TimeoutError:
                pass
