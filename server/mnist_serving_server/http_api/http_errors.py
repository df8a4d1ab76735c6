"""The server's errors as HTTP answers (docs/v2_protocol.md, "Errors").

There is no table here: each error kind carries its HTTP status and the name of its gRPC
code (`core/errors.py`), which `mnist_serving_requests_total{code}` records, so one alert
or dashboard query covers both protocols. This module adds what only HTTP has: the body
(`{"error": "..."}` as application/json) and the headers some statuses need. Anything
unexpected is a bug: 500 with the generic message, the traceback only in the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import orjson

from mnist_serving_server.core.errors import (
    MethodNotAllowedError,
    QueueFullError,
    UnauthenticatedError,
    answer_for,
)

RETRY_AFTER_S: Final = "1"
"""Retry-After on 429 (queue full): a batch takes milliseconds, so one second is plenty."""

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class HttpFailure:
    """How an exception is answered over HTTP, and counted."""

    status: int
    code: str
    """The gRPC code name `mnist_serving_requests_total{code}` records."""
    message: str
    headers: Headers

    @property
    def body(self) -> bytes:
        return error_body(self.message)


def error_body(message: str) -> bytes:
    """The body of every error answer."""
    return orjson.dumps({"error": message})


def failure_for(exc: BaseException) -> HttpFailure:
    """Status, code name, caller-safe message and headers for any exception."""
    status, message = answer_for(exc)
    return HttpFailure(status.http_status, status.grpc_code, message, _headers(exc))


def status_for(exc: BaseException) -> tuple[int, str, str]:
    """(HTTP status, gRPC code name for the metrics, caller-safe message) for an exception."""
    failure = failure_for(exc)
    return failure.status, failure.code, failure.message


def _headers(exc: BaseException) -> Headers:
    if isinstance(exc, QueueFullError):
        return [(b"retry-after", RETRY_AFTER_S.encode())]
    if isinstance(exc, UnauthenticatedError):
        return [(b"www-authenticate", b"Bearer")]
    if isinstance(exc, MethodNotAllowedError):
        return [(b"allow", exc.allowed.encode())]
    return []
