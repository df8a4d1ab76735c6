"""Answer a bidirectional stream concurrently while keeping replies in request order.

Both streaming RPCs (ClassifyStream and KServe V2 ModelStreamInfer) use this. A reader
task turns each request into a task and queues it; the caller's generator awaits the
tasks in order. A semaphore is the window: the reader takes a slot before it starts a
request's task and the generator gives it back once it has that task's reply, so at most
`window` requests are started and not yet replied to. While the window is full the
reader stops reading, and HTTP/2 flow control pushes back on the client, so one stream
cannot queue unbounded work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

# Stream requests in flight at once per stream: enough to keep the batcher fed from one
# stream, small enough that one client cannot flood the queue through a stream.
STREAM_WINDOW = 64

RequestT = TypeVar("RequestT")
ReplyT = TypeVar("ReplyT")


async def replies_in_order(
    requests: AsyncIterator[RequestT],
    answer: Callable[[RequestT], Awaitable[ReplyT]],
    *,
    window: int = STREAM_WINDOW,
) -> AsyncGenerator[ReplyT, None]:
    """Yield `await answer(request)` for each request, in order, up to `window` at once.

    `answer` should report per-request failures in its reply; an exception it raises, or
    one from reading `requests`, ends the stream with that exception.
    """
    # Tasks in arrival order (at most `window`); None marks the end of the client's requests.
    in_flight: asyncio.Queue[asyncio.Task[ReplyT] | None] = asyncio.Queue()
    slots = asyncio.Semaphore(window)

    async def read_requests() -> None:
        try:
            async for request in requests:
                await slots.acquire()  # waits while the window is full
                in_flight.put_nowait(asyncio.ensure_future(answer(request)))
        finally:
            in_flight.put_nowait(None)

    reader = asyncio.create_task(read_requests())
    try:
        while (task := await in_flight.get()) is not None:
            try:
                reply = await task
            finally:
                slots.release()
            yield reply
        await reader  # a broken request stream ends the call with its error
    finally:
        reader.cancel()
        while not in_flight.empty():
            leftover = in_flight.get_nowait()
            if leftover is not None:
                leftover.cancel()
        # Its error, if any, was raised above already.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
