"""Counting gRPC calls: one `RequestRecord` per RPC, counted exactly once with its code.

`answered_call` is the whole of it for a handler: counted, and every exception answered
through `grpc_errors`, so the code counted is the code the caller gets.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any, Final

import grpc
from grpc import aio

from mnist_serving_server.grpc_api.grpc_errors import code_of, errors_answered
from mnist_serving_server.metrics import REASON_NOT_READY, ServerMetrics

PROTOCOL: Final = "grpc"


class RequestRecord:
    """One RPC being handled, and its context manager; `code` None means "not decided yet".

    `finish(code)` counts the RPC at once. Error paths call it (via grpc_errors.abort_with)
    before `context.abort` sends the status, so the counters have moved by the time the
    caller sees its error; otherwise the RPC is counted when the `with` block exits. The
    servicer sets `model` and `version` once it has resolved them.

    A plain class with __slots__ rather than a @contextmanager generator: it runs on every
    RPC, and this costs a third of the generator version (docs/performance.md).
    """

    __slots__ = ("_metrics", "_started", "code", "counted", "method", "model", "version")

    def __init__(self, metrics: ServerMetrics, method: str) -> None:
        self._metrics = metrics
        self.method = method
        self.model = ""
        self.version = ""
        self.code: grpc.StatusCode | None = None
        self.counted = False
        self._started = 0.0

    def __enter__(self) -> RequestRecord:
        self._started = time.perf_counter()
        self._metrics.inflight_requests.inc()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and self.code is None:
            if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                self.code = grpc.StatusCode.CANCELLED
            else:  # e.g. a stream item that did not parse; INTERNAL for anything unexpected
                self.code = code_of(exc)
        self.finish(self.code or grpc.StatusCode.OK)

    def finish(self, code: grpc.StatusCode) -> None:
        """Count this RPC with `code` now (later calls, and the context exit, do nothing)."""
        if self.counted:
            return
        self.code = code
        self.counted = True
        metrics = self._metrics
        metrics.inflight_requests.dec()
        if code is grpc.StatusCode.UNAVAILABLE:  # warming up, shutting down, loop dead
            metrics.on_rejected(REASON_NOT_READY)
        metrics.count_request(
            PROTOCOL,
            self.method,
            self.model,
            self.version,
            code.name,
            time.perf_counter() - self._started,
        )


def track_request(metrics: ServerMetrics, method: str) -> RequestRecord:
    """Time one RPC, hold the in-flight gauge, and count it when it ends (a `with` block).

    The servicer sets `record.code` when it answers with an error; if it does not, a normal
    exit counts OK, a cancelled handler CANCELLED, a ServingError its status and any other
    exception INTERNAL. An UNAVAILABLE answer also counts a `not_ready` rejection.
    """
    return RequestRecord(metrics, method)


class AnsweredCall:
    """`async with answered_call(...) as record`: a RequestRecord, and any exception that
    leaves the block answered through grpc_errors (counted with that code first)."""

    __slots__ = ("_errors", "record")

    def __init__(
        self, metrics: ServerMetrics, method: str, context: aio.ServicerContext[Any, Any]
    ) -> None:
        self.record = RequestRecord(metrics, method)
        self._errors = errors_answered(context, self.record)

    async def __aenter__(self) -> RequestRecord:
        return self.record.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._errors.__aexit__(exc_type, exc, traceback)
        finally:  # counted already when an error was answered; otherwise OK or CANCELLED
            self.record.__exit__(exc_type, exc, traceback)


def answered_call(
    metrics: ServerMetrics, method: str, context: aio.ServicerContext[Any, Any]
) -> AnsweredCall:
    """One RPC counted as `method`, its errors answered with their mapped status (never
    grpc.aio's UNKNOWN); see track_request for what is counted when."""
    return AnsweredCall(metrics, method, context)
