"""The errors the server answers with, each knowing its status on every transport.

One class per way a call can fail (a "kind"). Each kind carries its `Status`: the gRPC code,
by name because the core never imports grpc (`grpc_api/grpc_errors.py` turns the name into
a `grpc.StatusCode`), and the HTTP status (`http_api/http_errors.py`). The transports
derive their answers from here and keep no table of their own, so one failure always gets
the same status on both, and `mnist_serving_requests_total{code}` counts it the same way.

A kind's message is meant for the caller and says what to fix, except INTERNAL's: a bug or
a runtime failure is answered with `INTERNAL_MESSAGE` alone, the details (traceback
included) go only to the log (`answer_for`). docs/v2_protocol.md ("Errors") describes the
statuses for users.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Final, Literal

logger = logging.getLogger(__name__)

GrpcCodeName = Literal[
    "OK",
    "CANCELLED",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "UNAUTHENTICATED",
]
"""The `grpc.StatusCode` member names this server answers with (a unit test checks them)."""


@dataclass(frozen=True, slots=True)
class Status:
    """What a caller is answered with: a gRPC code (by name) and an HTTP status."""

    grpc_code: GrpcCodeName
    http_status: int


OK: Final = Status("OK", 200)
INTERNAL: Final = Status("INTERNAL", 500)
INTERNAL_MESSAGE: Final = "internal server error; the details are in the server log"


class ServingError(Exception):
    """Base class of the kinds. Raised bare (or a subclass that sets no status) it counts
    as a bug, like any unexpected exception: INTERNAL with the generic message."""

    status: ClassVar[Status] = INTERNAL


class InvalidInputError(ServingError):
    """Malformed input: wrong shape, dtype or size, undecodable image, empty request."""

    status = Status("INVALID_ARGUMENT", 400)


class FailedPreconditionError(ServingError):
    """Well-formed, but refused in the server's current state: a model that does not fit
    the API called (Classify on a non-classifier), a repository change while the model
    control mode forbids it, or a load whose model files cannot be served."""

    status = Status("FAILED_PRECONDITION", 400)


class ModelNotFoundError(ServingError):
    """The request named a model or version this server does not serve (or has unloaded)."""

    status = Status("NOT_FOUND", 404)


class QueueFullError(ServingError):
    """Load shedding: the request does not fit in the bounded queue."""

    status = Status("RESOURCE_EXHAUSTED", 429)


class NotReadyError(ServingError):
    """Not ready yet, shutting down, the batch loop has stopped, or a sibling worker process
    cannot be reached (the server is restarting): worth retrying, here or elsewhere."""

    status = Status("UNAVAILABLE", 503)


class DeadlineExceededError(ServingError):
    """The request's deadline passed before it was computed."""

    status = Status("DEADLINE_EXCEEDED", 504)


class UnauthenticatedError(ServingError):
    """Token auth is on and the call carries no accepted bearer token."""

    status = Status("UNAUTHENTICATED", 401)


class InternalError(ServingError):
    """A failure known to be a bug or a runtime failure somewhere else (a sibling worker's,
    say): INTERNAL with the generic message; its own message goes only to the log."""


# --- failures only HTTP has to answer itself (grpc's own layer answers their equivalents) --


class PayloadTooLargeError(ServingError):
    """The request body is larger than the server takes (--max-message-bytes)."""

    status = Status("RESOURCE_EXHAUSTED", 413)


class NoSuchEndpointError(ServingError):
    """No endpoint (or static file) at the request's path."""

    status = Status("NOT_FOUND", 404)


class MethodNotAllowedError(ServingError):
    """The path exists, but not for this HTTP method; `allowed` is the one it takes."""

    status = Status("UNIMPLEMENTED", 405)

    def __init__(self, message: str, allowed: str) -> None:
        super().__init__(message)
        self.allowed = allowed


class RequestTimeoutError(ServingError):
    """The client did not send its whole request in time (a slow or stalled client)."""

    status = Status("DEADLINE_EXCEEDED", 408)


class ClientClosedError(ServingError):
    """The client went away before its request was read (nginx's 499; nobody reads it)."""

    status = Status("CANCELLED", 499)


def status_of(exc: BaseException) -> Status:
    """The status `exc` is answered with: its kind's, INTERNAL for anything else."""
    return exc.status if isinstance(exc, ServingError) else INTERNAL


def answer_for(exc: BaseException) -> tuple[Status, str]:
    """The status and the caller-safe message for `exc`, whatever it is.

    INTERNAL (any exception that is not a kind, a bare ServingError, an InternalError) is
    answered with INTERNAL_MESSAGE and logged here with its traceback, never shown.
    """
    status = status_of(exc)
    if status == INTERNAL:
        logger.error("internal error while handling a request", exc_info=exc)
        return INTERNAL, INTERNAL_MESSAGE
    return status, str(exc)


class ModelLoadError(Exception):
    """The model could not be found or loaded at start-up (the process exits non-zero)."""
