"""The server's errors as gRPC statuses, and how a handler ends its RPC with one.

docs/v2_protocol.md and docs/preprocessing.md ("Errors") describe the statuses for users.

There is no table here: each error kind carries its status (`core/errors.py`), and this
module only turns the code's name into a `grpc.StatusCode`. Every servicer goes through
`status_for` / `abort_with` (or `errors_answered`, which calls it), so one exception always
meets one status code and no handler lets an exception reach grpc.aio, which would answer
UNKNOWN with the exception's text. Expected errors carry a message meant for the caller;
anything else is a bug or a runtime failure: INTERNAL with the generic message, the
traceback only in the log.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, NoReturn, Protocol

import grpc
from grpc import aio

from mnist_serving_server.core.errors import INTERNAL_MESSAGE, Status, answer_for, status_of

__all__ = [
    "INTERNAL_MESSAGE",
    "CountedCall",
    "abort_with",
    "code_of",
    "errors_answered",
    "grpc_code",
    "status_code_number",
    "status_for",
]


class CountedCall(Protocol):
    """What counts an RPC (call_metrics.RequestRecord): told the code before it goes out,
    and the error that caused it (its kind goes on the call's span)."""

    def finish(self, code: grpc.StatusCode, error: BaseException | None = None) -> None: ...


def grpc_code(status: Status) -> grpc.StatusCode:
    """The grpc.StatusCode a status names."""
    return grpc.StatusCode[status.grpc_code]


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and caller-safe message for an exception.

    Anything but an error kind with a status of its own is INTERNAL with the generic
    message, logged with its traceback (core.errors.answer_for).
    """
    status, message = answer_for(exc)
    return grpc_code(status), message


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The code `exc` is answered with, without logging it (for counting a call)."""
    return grpc_code(status_of(exc))


def status_code_number(code: grpc.StatusCode) -> int:
    """The numeric google.rpc.Code of a status (3 for INVALID_ARGUMENT), for stream replies."""
    number: int = code.value[0]
    return number


async def abort_with(
    context: aio.ServicerContext[Any, Any],
    exc: BaseException,
    record: CountedCall | None = None,
) -> NoReturn:
    """End the RPC with exc's status and message (never a traceback).

    With `record` (from call_metrics.track_request), the RPC is counted before the status
    goes out, so a caller that reads /metrics right after its error sees it counted.
    """
    code, message = status_for(exc)
    if record is not None:
        record.finish(code, exc)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises


class errors_answered:  # noqa: N801 - used like a function: `async with errors_answered(...)`
    """`async with`: an exception that leaves the block ends the RPC through `abort_with`.

    An abort already under way (aio.AbortError: the handler chose its status) and a
    cancellation pass through untouched; every other exception, expected or not, becomes
    its mapped status instead of grpc.aio's UNKNOWN.
    """

    __slots__ = ("_context", "_record")

    def __init__(
        self, context: aio.ServicerContext[Any, Any], record: CountedCall | None = None
    ) -> None:
        self._context = context
        self._record = record

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None or isinstance(exc, (aio.AbortError, asyncio.CancelledError)):
            return
        if isinstance(exc, Exception):
            await abort_with(self._context, exc, self._record)
