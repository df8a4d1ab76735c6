"""The server's event loop: uvloop when installed, asyncio's own otherwise; both serve."""

from __future__ import annotations

import asyncio
import importlib.util

from mnist_serving_server import event_loop

UVLOOP_INSTALLED = importlib.util.find_spec(event_loop.UVLOOP_MODULE) is not None


def test_loop_factory_is_uvloop_exactly_when_installed() -> None:
    factory = event_loop.loop_factory()
    assert (factory is not None) == UVLOOP_INSTALLED


def test_run_returns_the_coroutine_result_on_the_chosen_loop() -> None:
    async def loop_module() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    module = event_loop.run(loop_module())
    assert module.startswith(event_loop.UVLOOP_MODULE if UVLOOP_INSTALLED else "asyncio")
