"""The event loop the server runs on: uvloop when it is installed, else asyncio's own.

Measured here (docs/performance.md): with uvloop, grpc.aio's per-request work costs
~15% less CPU and single-image Classify at 64 callers gains ~15% requests/s. uvloop is an
optional dependency (not on every platform); without it nothing else changes.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

UVLOOP_MODULE = "uvloop"
Result = TypeVar("Result")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor if uvloop is importable, else None (asyncio's default)."""
    try:
        uvloop: Any = importlib.import_module(UVLOOP_MODULE)
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, Result]) -> Result:
    """asyncio.run(main) on the fastest loop available."""
    factory = loop_factory()
    logger.debug("event loop: %s", "uvloop" if factory is not None else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
