"""The server's event loop: uvloop when it can be imported, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest

from mnist_serving_server import event_loop


async def loop_type() -> type[asyncio.AbstractEventLoop]:
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop())


class MarkedLoop(asyncio.SelectorEventLoop):
    """What the stand-in uvloop builds: a loop the test can recognise."""


def test_run_uses_uvloops_loop_when_uvloop_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType(event_loop.UVLOOP_MODULE)
    fake.new_event_loop = MarkedLoop  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, event_loop.UVLOOP_MODULE, fake)
    assert event_loop.run(loop_type()) is MarkedLoop


def test_run_falls_back_to_asyncio_when_uvloop_does_not_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, event_loop.UVLOOP_MODULE, None)  # import raises ImportError
    assert event_loop.loop_factory() is None
    chosen = event_loop.run(loop_type())
    assert chosen.__module__.startswith("asyncio")


def test_run_returns_the_coroutine_result() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert event_loop.run(answer()) == 42
