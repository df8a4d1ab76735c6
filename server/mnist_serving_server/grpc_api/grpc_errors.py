"""The one table from the server's exceptions to gRPC status codes.

docs/v2_protocol.md and docs/preprocessing.md ("Errors") describe it for users.

Every servicer (Classify and KServe V2) goes through `status_for` / `abort_with`, so one
exception always meets one status code. Expected errors (`errors.ServingError`) carry a
message meant for the caller. Anything else is a bug or a runtime failure: the caller gets
INTERNAL with a generic message and the details, traceback included, go only to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import grpc
from grpc import aio

from mnist_serving_server.core.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
    QueueFullError,
    ServingError,
)

if TYPE_CHECKING:
    from mnist_serving_server.grpc_api.call_metrics import RequestRecord

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: Mapping[type[ServingError], grpc.StatusCode] = {
    InvalidInputError: grpc.StatusCode.INVALID_ARGUMENT,
    ModelNotFoundError: grpc.StatusCode.NOT_FOUND,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    QueueFullError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotReadyError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
}

INTERNAL_MESSAGE = "internal server error; the details are in the server log"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and caller-safe message for an exception.

    A ServingError subclass not in the table (a new class someone forgot to map) counts as
    a bug, like any other exception: INTERNAL, logged with its traceback.
    """
    if isinstance(exc, ServingError):
        for cls in type(exc).__mro__:
            code = STATUS_BY_ERROR.get(cls)
            if code is not None:
                return code, str(exc)
    logger.error("internal error while handling a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def status_code_number(code: grpc.StatusCode) -> int:
    """The numeric google.rpc.Code of a status (3 for INVALID_ARGUMENT), for stream replies."""
    number: int = code.value[0]
    return number


async def abort_with(
    context: aio.ServicerContext[Any, Any],
    exc: BaseException,
    record: RequestRecord | None = None,
) -> NoReturn:
    """End the RPC with exc's status and message (never a traceback).

    With `record` (from call_metrics.track_request), the RPC is counted before the status
    goes out, so a caller that reads /metrics right after its error sees it counted.
    """
    code, message = status_for(exc)
    if record is not None:
        record.finish(code)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
