"""The exceptions the SDK raises.

Every failure is a `MnistServingError`. The subclass is chosen from the gRPC status code
by ONE table (`ERROR_CLASS_BY_STATUS`), never from the message text, so callers can rely
on `except OverloadedError:` while the server is free to reword its messages. The server's
message is kept verbatim in `.message` (and `str(error)`), its status in `.code`.
"""

from __future__ import annotations

import grpc


class MnistServingError(Exception):
    """The root of every SDK error: the server's message and its gRPC status code.

    `code` is None only for errors found on the client side before anything was sent.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.code.name}: {self.message}"


class InvalidInputError(MnistServingError, ValueError):
    """The input is malformed: raised by the SDK before sending, or by the server
    (INVALID_ARGUMENT). Also a ValueError, so generic input validation catches it."""


class NotFoundError(MnistServingError):
    """The server does not serve the requested model or version (NOT_FOUND)."""


class FailedPreconditionError(MnistServingError):
    """The server refuses the call in its present state or configuration
    (FAILED_PRECONDITION): e.g. loading or unloading models while the server's model control
    is off (`--model-control-mode none`), or Classify on a model that is not a classifier."""


class OverloadedError(MnistServingError):
    """The server shed the request because its queue is full (RESOURCE_EXHAUSTED).

    The SDK already retried with backoff; slow down or add replicas."""


class UnavailableError(MnistServingError):
    """The server cannot be reached, is not ready yet, or is shutting down (UNAVAILABLE)."""


class DeadlineExceededError(MnistServingError):
    """The call's deadline passed before the answer came (DEADLINE_EXCEEDED)."""


class UnauthenticatedError(MnistServingError):
    """The server did not accept the credentials (UNAUTHENTICATED): check the token."""


class PermissionDeniedError(MnistServingError):
    """The credentials are valid but not allowed to make this call (PERMISSION_DENIED)."""


class CallCancelledError(MnistServingError):
    """The call was cancelled before it completed (CANCELLED)."""


class ServerError(MnistServingError):
    """The server failed on its side (INTERNAL, UNKNOWN, DATA_LOSS, UNIMPLEMENTED)."""


# The one mapping from status code to exception class. Codes not listed raise the root.
ERROR_CLASS_BY_STATUS: dict[grpc.StatusCode, type[MnistServingError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidInputError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.DATA_LOSS: ServerError,
    grpc.StatusCode.UNIMPLEMENTED: ServerError,
}

# google.rpc.Code numbers (used by per-request errors inside streams) -> grpc.StatusCode.
_STATUS_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def error_for_status(code: grpc.StatusCode, message: str) -> MnistServingError:
    """The SDK exception for a gRPC status code, keeping the server's message."""
    error_class = ERROR_CLASS_BY_STATUS.get(code, MnistServingError)
    return error_class(message, code)


def error_for_status_number(number: int, message: str) -> MnistServingError:
    """Like `error_for_status` for a numeric code (a stream response's `error.code`)."""
    code = _STATUS_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
    return error_for_status(code, message)


def error_from_rpc_error(error: grpc.RpcError) -> MnistServingError:
    """Translate a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`)."""
    # Both the sync call object and AioRpcError expose code() and details().
    code_method = getattr(error, "code", None)
    details_method = getattr(error, "details", None)
    code = code_method() if callable(code_method) else None
    details = details_method() if callable(details_method) else None
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return error_for_status(code, details or str(error))
