"""The one table from the server's exceptions to HTTP statuses (docs/v2_protocol.md, "Errors").

Beside `grpc_api/grpc_errors.py`, from the same exceptions. Every error body is
`{"error": "..."}` as application/json. Each status also carries the name of the matching
gRPC code, which `mnist_serving_requests_total{code}` records, so one alert or dashboard
query covers both protocols. Anything unexpected is a bug: 500 with a generic message,
the traceback only in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Final

from mnist_serving_server.core.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
    QueueFullError,
    ServingError,
)

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE: Final = "internal server error; the details are in the server log"
RETRY_AFTER_S: Final = "1"
"""Retry-After on 429 (queue full): a batch takes milliseconds, so one second is plenty."""

# HTTP status -> the gRPC code name counted in the metrics for it.
CODE_NAMES: Final[Mapping[int, str]] = {
    200: "OK",
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    413: "RESOURCE_EXHAUSTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class HttpError(ServingError):
    """An HTTP-only failure (body too large, unknown path, wrong method, no token)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class PayloadTooLargeError(HttpError):
    def __init__(self, message: str) -> None:
        super().__init__(413, message)


STATUS_BY_ERROR: Final[Mapping[type[ServingError], tuple[int, str]]] = {
    InvalidInputError: (400, "INVALID_ARGUMENT"),
    FailedPreconditionError: (400, "FAILED_PRECONDITION"),
    ModelNotFoundError: (404, "NOT_FOUND"),
    QueueFullError: (429, "RESOURCE_EXHAUSTED"),
    NotReadyError: (503, "UNAVAILABLE"),
    DeadlineExceededError: (504, "DEADLINE_EXCEEDED"),
}


def status_for(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, gRPC code name for the metrics, caller-safe message) for an exception."""
    if isinstance(exc, HttpError):
        return exc.status, CODE_NAMES.get(exc.status, "UNKNOWN"), str(exc)
    if isinstance(exc, ServingError):
        for cls in type(exc).__mro__:
            entry = STATUS_BY_ERROR.get(cls)
            if entry is not None:
                return entry[0], entry[1], str(exc)
    logger.error("internal error while handling an HTTP request", exc_info=exc)
    return 500, "INTERNAL", INTERNAL_MESSAGE
