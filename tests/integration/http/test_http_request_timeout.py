"""--http-request-timeout-s: a request whose headers or body stop arriving gets 408 and its
connection is closed; idle keep-alive time and the time an answer is computed never count.

Raw asyncio sockets (the server runs on this test's loop): every read is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import numpy as np
import pytest

from mnist_serving_server.app import ServingApp
from mnist_serving_server.http_api.front import REQUEST_TIMEOUT_MESSAGE
from tests.integration.conftest import LOOPBACK, RuntimeGate, StartApp
from tests.integration.http.http_support import Answer, binary_request, call

pytestmark = pytest.mark.integration

INFER = "/v2/models/mnist/infer"
TIMEOUT_S = 0.5
# How late past the timeout the 408 may come (a loaded 2-core machine), and the bound on
# every read that does not wait for the timeout.
SLACK_S = 2.0
IO_LIMIT_S = 10.0
STALLED_CONNECTIONS = 200

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def connect(app: ServingApp) -> Stream:
    assert app.http_port is not None
    async with asyncio.timeout(IO_LIMIT_S):
        return await asyncio.open_connection(LOOPBACK, app.http_port)


async def close(stream: Stream) -> None:
    writer = stream[1]
    writer.close()
    with contextlib.suppress(OSError):
        async with asyncio.timeout(IO_LIMIT_S):
            await writer.wait_closed()


async def send(stream: Stream, data: bytes) -> None:
    writer = stream[1]
    writer.write(data)
    async with asyncio.timeout(IO_LIMIT_S):
        await writer.drain()


async def read_answer(stream: Stream, limit_s: float = IO_LIMIT_S) -> Answer:
    """One response (Content-Length framed, as every answer of this server is)."""
    reader = stream[0]
    async with asyncio.timeout(limit_s):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
    return Answer(int(status_line.split(" ")[1]), headers, body)


async def read_to_end(stream: Stream, limit_s: float = IO_LIMIT_S) -> bytes:
    """What the server still sends before it closes the connection."""
    async with asyncio.timeout(limit_s):
        return await stream[0].read()


def request_head(method: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: test",
        *[f"{k}: {v}" for k, v in (headers or {}).items()],
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def infer_request() -> bytes:
    """A complete binary-tensor V2 infer request for one blank digit."""
    body, headers = binary_request(np.zeros((1, 28, 28), np.uint8))
    return request_head("POST", INFER, {**headers, "Content-Length": str(len(body))}) + body


def assert_timed_out(answer: Answer, timeout_s: float) -> None:
    assert answer.status == 408, answer
    assert answer.headers["connection"] == "close"
    assert answer.json() == {"error": REQUEST_TIMEOUT_MESSAGE.format(timeout_s=timeout_s)}


async def expect_408_and_close(
    stream: Stream, started: float, timeout_s: float, *, not_before_s: float | None = None
) -> None:
    """The 408 comes within `timeout_s` + SLACK_S of `started` and not before `not_before_s`
    (default: the timeout), then the server closes the connection."""
    earliest = timeout_s if not_before_s is None else not_before_s
    answer = await read_answer(stream, timeout_s + SLACK_S)
    elapsed = asyncio.get_running_loop().time() - started
    assert_timed_out(answer, timeout_s)
    assert await read_to_end(stream) == b""
    assert earliest <= elapsed < timeout_s + SLACK_S, elapsed


async def test_a_body_that_stops_gets_408_and_the_connection_closed(
    start_app: StartApp,
) -> None:
    app = await start_app(http_request_timeout_s=TIMEOUT_S)
    started = asyncio.get_running_loop().time()
    stream = await connect(app)
    try:
        head = request_head(
            "POST", INFER, {"Content-Type": "application/json", "Content-Length": "1000"}
        )
        await send(stream, head + b"{")
        await expect_408_and_close(stream, started, TIMEOUT_S)
    finally:
        await close(stream)


@pytest.mark.parametrize(
    "partial",
    [
        b"",  # connected, never sent a byte
        b"POST /v2/models/mni",  # half a request line
        b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\nAccept: ",  # headers, unfinished
    ],
    ids=["nothing", "request-line", "headers"],
)
async def test_unfinished_headers_get_408_and_the_connection_closed(
    start_app: StartApp, partial: bytes
) -> None:
    app = await start_app(http_request_timeout_s=TIMEOUT_S)
    started = asyncio.get_running_loop().time()
    stream = await connect(app)
    try:
        if partial:
            await send(stream, partial)
        await expect_408_and_close(stream, started, TIMEOUT_S)
    finally:
        await close(stream)


async def test_many_stalled_connections_do_not_stop_a_normal_request(
    start_app: StartApp,
) -> None:
    # Long enough that the stalled connections are surely all still open while the normal
    # request runs, so it shows they do not block it.
    timeout_s = 3.0
    app = await start_app(http_request_timeout_s=timeout_s)
    loop = asyncio.get_running_loop()
    started = loop.time()
    streams = await asyncio.gather(*(connect(app) for _ in range(STALLED_CONNECTIONS)))
    try:
        stalls = [
            request_head("POST", INFER, {"Content-Length": "1000"}) + b"{",
            b"GET /v2/health/ready HTTP/1.1\r\nHo",
        ]
        await asyncio.gather(
            *(send(stream, stalls[i % len(stalls)]) for i, stream in enumerate(streams))
        )
        body, headers = binary_request(np.zeros((1, 28, 28), np.uint8))
        async with asyncio.timeout(IO_LIMIT_S):
            normal = await call(app.http_base, "POST", INFER, body, headers)
        assert normal.status == 200, normal
        assert loop.time() - started < timeout_s  # answered while all of them were stalled

        async def timed_out(stream: Stream) -> None:
            assert_timed_out(await read_answer(stream, timeout_s + SLACK_S), timeout_s)
            assert await read_to_end(stream) == b""

        await asyncio.gather(*(timed_out(stream) for stream in streams))
        assert loop.time() - started < timeout_s + SLACK_S
    finally:
        await asyncio.gather(*(close(stream) for stream in streams))


async def test_a_slow_but_complete_request_succeeds(start_app: StartApp) -> None:
    timeout_s = 2.0
    app = await start_app(http_request_timeout_s=timeout_s)
    stream = await connect(app)
    try:
        request = infer_request()
        pieces = 5
        step = -(-len(request) // pieces)
        for start in range(0, len(request), step):
            await send(stream, request[start : start + step])
            await asyncio.sleep(0.05)  # a slow client: well within the timeout in total
        answer = await read_answer(stream)
        assert answer.status == 200, answer
        assert "connection" not in answer.headers  # still keep-alive
    finally:
        await close(stream)


async def test_an_idle_keep_alive_connection_is_not_cut(start_app: StartApp) -> None:
    app = await start_app(http_request_timeout_s=TIMEOUT_S)
    stream = await connect(app)
    try:
        live = request_head("GET", "/v2/health/live")
        await send(stream, live)
        assert (await read_answer(stream)).status == 200
        # Idle between requests for longer than the request timeout (the condition under
        # test, not a wait for something): the next request still gets its answer.
        await asyncio.sleep(3 * TIMEOUT_S)
        await send(stream, live)
        answer = await read_answer(stream)
        assert (answer.status, answer.json()) == (200, {"live": True})
    finally:
        await close(stream)


async def test_an_answer_computed_longer_than_the_timeout_is_not_cut(
    start_app: StartApp, runtime_gate: RuntimeGate
) -> None:
    app = await start_app(http_request_timeout_s=TIMEOUT_S)
    stream = await connect(app)
    try:
        runtime_gate.close()
        await send(stream, infer_request())
        await runtime_gate.wait_entered()
        await asyncio.sleep(3 * TIMEOUT_S)  # the model "computes" past the timeout
        runtime_gate.open()
        answer = await read_answer(stream)
        assert answer.status == 200, answer
        assert "connection" not in answer.headers  # still keep-alive
        await send(stream, request_head("GET", "/v2/health/live"))
        assert (await read_answer(stream)).status == 200
    finally:
        runtime_gate.open()
        await close(stream)


async def test_a_pipelined_request_that_stops_waits_for_the_answer_before_it(
    start_app: StartApp, runtime_gate: RuntimeGate
) -> None:
    app = await start_app(http_request_timeout_s=TIMEOUT_S)
    stream = await connect(app)
    try:
        runtime_gate.close()
        # A whole request, then the start of a second one: the second one's 408 must wait
        # for the first answer rather than be written before or into it.
        await send(stream, infer_request() + b"GET /v2/health/live HTTP/1.1\r\nHo")
        await runtime_gate.wait_entered()
        await asyncio.sleep(3 * TIMEOUT_S)  # the model "computes" past the timeout
        runtime_gate.open()
        reopened = asyncio.get_running_loop().time()
        answer = await read_answer(stream)
        assert answer.status == 200, answer
        assert json.loads(answer.body[: int(answer.headers["inference-header-content-length"])])
        # Then the unfinished second request, past its time already, gets its 408: within
        # one more timeout (the server defers a due 408 by a timeout while it answers).
        await expect_408_and_close(stream, reopened, TIMEOUT_S, not_before_s=0.0)
    finally:
        runtime_gate.open()
        await close(stream)


async def test_a_body_still_coming_after_an_early_answer_is_closed_without_408(
    start_app: StartApp,
) -> None:
    max_body = 100
    app = await start_app(http_request_timeout_s=TIMEOUT_S, max_message_bytes=max_body)
    started = asyncio.get_running_loop().time()
    stream = await connect(app)
    try:
        head = request_head("POST", INFER, {"Content-Length": str(10 * max_body)})
        await send(stream, head + b"{")
        answer = await read_answer(stream)
        assert answer.status == 413, answer  # the declared length alone is too large
        # The client never sends the rest: its connection is closed, with nothing more
        # written (the request already has its answer).
        assert await read_to_end(stream, TIMEOUT_S + SLACK_S) == b""
        assert asyncio.get_running_loop().time() - started >= TIMEOUT_S
    finally:
        await close(stream)
