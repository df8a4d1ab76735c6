"""replies_in_order: concurrent answers, replies in request order, a bounded window."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from mnist_serving_server.grpc_api.ordered_stream import replies_in_order

WINDOW = 4
REQUESTS = 20


async def numbers(count: int) -> AsyncIterator[int]:
    for number in range(count):
        yield number


async def test_replies_keep_request_order_when_answers_finish_out_of_order() -> None:
    async def answer(number: int) -> int:
        # Later requests finish first: the order must come from the queue, not completion.
        await asyncio.sleep((REQUESTS - number) / 2000)
        return number * 10

    replies = [reply async for reply in replies_in_order(numbers(REQUESTS), answer, window=WINDOW)]
    assert replies == [number * 10 for number in range(REQUESTS)]


async def test_answers_in_flight_stay_bounded_by_the_window() -> None:
    running = 0
    peak = 0
    release = asyncio.Event()

    async def answer(number: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return number

    async def consume() -> list[int]:
        return [reply async for reply in replies_in_order(numbers(REQUESTS), answer, window=WINDOW)]

    consumer = asyncio.create_task(consume())
    for _ in range(50):  # let the reader fill the window; it must then stop reading
        await asyncio.sleep(0)
    # Exactly the window: the reader then waits for a slot.
    assert peak == WINDOW
    release.set()
    assert await consumer == list(range(REQUESTS))


async def test_a_failing_request_stream_ends_the_replies_with_its_error() -> None:
    async def broken(count: int) -> AsyncIterator[int]:
        for number in range(count):
            yield number
        raise ValueError("the client's stream broke")

    async def answer(number: int) -> int:
        return number

    received: list[int] = []

    async def consume() -> None:
        async for reply in replies_in_order(broken(3), answer, window=WINDOW):
            received.append(reply)

    with pytest.raises(ValueError, match="stream broke"):
        await consume()
    assert received == [0, 1, 2]


async def test_closing_the_replies_cancels_unanswered_requests() -> None:
    started: list[int] = []
    cancelled: list[int] = []

    async def answer(number: int) -> int:
        started.append(number)
        try:
            await asyncio.Event().wait()  # never answered
        except asyncio.CancelledError:
            cancelled.append(number)
            raise
        return number

    replies = replies_in_order(numbers(REQUESTS), answer, window=WINDOW)
    first = asyncio.ensure_future(replies.__anext__())
    for _ in range(50):
        await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await replies.aclose()
    for _ in range(10):
        await asyncio.sleep(0)
    assert started
    assert sorted(cancelled) == sorted(started)
