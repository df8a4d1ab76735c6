"""Each error kind's status, defined once (core/errors.py) and derived by both transports."""

from __future__ import annotations

import logging
from typing import get_args

import grpc
import pytest

from mnist_serving_server.core import errors
from mnist_serving_server.grpc_api import grpc_errors
from mnist_serving_server.http_api import http_errors
from mnist_serving_server.peer_messages import PeerFailedError, PeerUnreachableError

# The design table (docs/v2_protocol.md, "Errors"): kind -> (gRPC code, HTTP status).
DESIGN: list[tuple[errors.ServingError, grpc.StatusCode, int]] = [
    (errors.InvalidInputError("images[0] is bad"), grpc.StatusCode.INVALID_ARGUMENT, 400),
    (errors.FailedPreconditionError("not a classifier"), grpc.StatusCode.FAILED_PRECONDITION, 400),
    (errors.ModelNotFoundError("no model 'x'"), grpc.StatusCode.NOT_FOUND, 404),
    (errors.QueueFullError("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (errors.NotReadyError("warming up"), grpc.StatusCode.UNAVAILABLE, 503),
    (PeerUnreachableError("worker 1 did not answer"), grpc.StatusCode.UNAVAILABLE, 503),
    (errors.DeadlineExceededError("too late"), grpc.StatusCode.DEADLINE_EXCEEDED, 504),
    (errors.UnauthenticatedError("authentication required"), grpc.StatusCode.UNAUTHENTICATED, 401),
    (errors.PayloadTooLargeError("body too large"), grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (errors.NoSuchEndpointError("no such endpoint"), grpc.StatusCode.NOT_FOUND, 404),
    (errors.MethodNotAllowedError("use GET", "GET"), grpc.StatusCode.UNIMPLEMENTED, 405),
    (
        errors.RequestTimeoutError("request not sent in time"),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        408,
    ),
    (errors.ClientClosedError("client left"), grpc.StatusCode.CANCELLED, 499),
]

UNEXPECTED: list[BaseException] = [
    RuntimeError("/secret/path failed"),
    KeyError("probabilities"),
    errors.ServingError("bare"),
    errors.InternalError("a bug, in detail"),
    PeerFailedError("worker process 1 failed the load request"),
]


@pytest.mark.parametrize(("error", "code", "http_status"), DESIGN, ids=lambda v: repr(v)[:30])
def test_each_kind_has_its_code_and_status_on_both_transports_and_keeps_its_message(
    error: errors.ServingError, code: grpc.StatusCode, http_status: int
) -> None:
    assert grpc_errors.status_for(error) == (code, str(error))
    assert http_errors.status_for(error) == (http_status, code.name, str(error))


def test_a_subclass_answers_like_its_parent() -> None:
    class PixelCountError(errors.InvalidInputError):
        pass

    assert grpc_errors.status_for(PixelCountError("x"))[0] is grpc.StatusCode.INVALID_ARGUMENT
    assert http_errors.status_for(PixelCountError("x"))[0] == 400


@pytest.mark.parametrize("error", UNEXPECTED, ids=lambda e: type(e).__name__)
def test_anything_unexpected_is_internal_500_with_the_generic_message_and_a_logged_traceback(
    error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    try:  # raised, so that the log has a real traceback to show
        raise error
    except BaseException as raised:
        with caplog.at_level(logging.ERROR):
            grpc_answer = grpc_errors.status_for(raised)
            http_answer = http_errors.status_for(raised)
    assert grpc_answer == (grpc.StatusCode.INTERNAL, errors.INTERNAL_MESSAGE)
    assert http_answer == (500, "INTERNAL", errors.INTERNAL_MESSAGE)
    assert len(caplog.records) == 2
    for record in caplog.records:
        assert record.exc_info is not None
        assert record.exc_info[1] is error
        assert record.exc_info[2] is not None  # the traceback
    assert str(error) not in errors.INTERNAL_MESSAGE


def test_counting_a_failure_maps_it_without_logging(caplog: pytest.LogCaptureFixture) -> None:
    assert grpc_errors.code_of(errors.QueueFullError("x")) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_errors.code_of(ValueError("x")) is grpc.StatusCode.INTERNAL
    assert not caplog.records


def test_every_kind_in_the_core_sets_a_status_of_its_own() -> None:
    """A new kind that forgets its status would be answered INTERNAL: only InternalError may."""
    kinds = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, errors.ServingError)
    ]
    unmapped = {kind for kind in kinds if kind.status == errors.INTERNAL}
    assert unmapped == {errors.ServingError, errors.InternalError}
    assert {type(error) for error, _, _ in DESIGN} >= set(kinds) - unmapped


def test_every_code_name_is_a_grpc_status_code() -> None:
    names = get_args(errors.GrpcCodeName)
    assert len(names) == len(set(names))
    for name in names:
        assert grpc_errors.grpc_code(errors.Status(name, 500)).name == name


@pytest.mark.parametrize(
    ("error", "header"),
    [
        (errors.QueueFullError("full"), (b"retry-after", http_errors.RETRY_AFTER_S.encode())),
        (errors.UnauthenticatedError("no"), (b"www-authenticate", b"Bearer")),
        (errors.MethodNotAllowedError("use POST", "POST"), (b"allow", b"POST")),
    ],
)
def test_http_statuses_that_need_a_header_get_it(
    error: errors.ServingError, header: tuple[bytes, bytes]
) -> None:
    failure = http_errors.failure_for(error)
    assert failure.headers == [header]
    assert failure.body == b'{"error":"' + str(error).encode() + b'"}'


def test_other_http_failures_carry_no_extra_header() -> None:
    assert http_errors.failure_for(errors.InvalidInputError("bad")).headers == []
    assert http_errors.failure_for(RuntimeError("bug")).headers == []


def test_status_code_number_is_the_wire_number() -> None:
    assert grpc_errors.status_code_number(grpc.StatusCode.INVALID_ARGUMENT) == 3
    assert grpc_errors.status_code_number(grpc.StatusCode.UNAVAILABLE) == 14
