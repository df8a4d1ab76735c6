"""The status code alone picks the exception class; the server's message is kept."""

from __future__ import annotations

import grpc
import pytest

from mnist_serving_client import errors
from mnist_serving_client.errors import (
    ERROR_CLASS_BY_STATUS,
    InvalidInputError,
    MnistServingError,
    OverloadedError,
    UnauthenticatedError,
    error_for_status,
    error_for_status_number,
)

DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInputError,
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPreconditionError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.OverloadedError,
    grpc.StatusCode.UNAVAILABLE: errors.UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: errors.UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
    grpc.StatusCode.CANCELLED: errors.CallCancelledError,
    grpc.StatusCode.INTERNAL: errors.ServerError,
}


@pytest.mark.parametrize(("code", "error_class"), DOCUMENTED.items())
def test_each_status_has_its_class_and_keeps_the_message(
    code: grpc.StatusCode, error_class: type[MnistServingError]
):
    error = error_for_status(code, "the server's own words")
    assert type(error) is error_class
    assert error.code is code
    assert error.message == "the server's own words"
    assert str(error) == f"{code.name}: the server's own words"


def test_the_message_text_never_changes_the_class():
    error = error_for_status(grpc.StatusCode.NOT_FOUND, "queue full: RESOURCE_EXHAUSTED")
    assert type(error) is errors.NotFoundError


def test_unlisted_codes_raise_the_root():
    error = error_for_status(grpc.StatusCode.ABORTED, "no")
    assert type(error) is MnistServingError
    assert error.code is grpc.StatusCode.ABORTED


def test_every_class_derives_from_the_root():
    assert all(issubclass(cls, MnistServingError) for cls in ERROR_CLASS_BY_STATUS.values())
    assert issubclass(InvalidInputError, ValueError)


@pytest.mark.parametrize(
    ("number", "error_class"),
    [(3, InvalidInputError), (8, OverloadedError), (16, UnauthenticatedError)],
)
def test_stream_error_numbers_map_like_statuses(number, error_class):
    error = error_for_status_number(number, "in the stream")
    assert type(error) is error_class
    assert error.code is not None
    assert error.code.value[0] == number


def test_unknown_stream_error_number_is_unknown():
    assert error_for_status_number(999, "?").code is grpc.StatusCode.UNKNOWN


def test_client_side_errors_have_no_code():
    error = InvalidInputError("bad shape")
    assert error.code is None
    assert str(error) == "bad shape"
