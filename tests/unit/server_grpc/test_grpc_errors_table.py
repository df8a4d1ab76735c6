"""The one exception -> gRPC status table (grpc_errors.STATUS_BY_ERROR)."""

from __future__ import annotations

import grpc
import pytest

from mnist_serving_server.core import errors
from mnist_serving_server.grpc_api.grpc_errors import (
    INTERNAL_MESSAGE,
    status_code_number,
    status_for,
)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidInputError("images[0] is bad"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.ModelNotFoundError("no such model"), grpc.StatusCode.NOT_FOUND),
        (errors.QueueFullError("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.NotReadyError("warming up"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceededError("too late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_each_serving_error_has_its_status_and_keeps_its_message(
    error: errors.ServingError, code: grpc.StatusCode
) -> None:
    assert status_for(error) == (code, str(error))


def test_a_subclass_maps_like_its_parent() -> None:
    class PixelCountError(errors.InvalidInputError):
        pass

    assert status_for(PixelCountError("x"))[0] is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "error",
    [RuntimeError("/secret/path failed"), KeyError("probabilities"), errors.ServingError("bare")],
)
def test_anything_else_is_internal_with_a_generic_message_and_a_logged_traceback(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    code, message = status_for(error)
    assert code is grpc.StatusCode.INTERNAL
    assert message == INTERNAL_MESSAGE
    assert caplog.records[-1].exc_info is not None


def test_status_code_number_is_the_wire_number() -> None:
    assert status_code_number(grpc.StatusCode.INVALID_ARGUMENT) == 3
    assert status_code_number(grpc.StatusCode.UNAVAILABLE) == 14
