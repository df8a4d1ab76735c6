"""Errors, retries, credentials and stream flow control, observed on a real gRPC server of
our own (scripted_server.py) that counts what the client really did."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from mnist_serving_client import (
    AsyncClient,
    Client,
    MnistServingError,
    OverloadedError,
    Prediction,
    RetryPolicy,
    TlsConfig,
    UnauthenticatedError,
    UnavailableError,
    errors,
)
from tests.integration.client.certificates import make_certificates
from tests.integration.client.scripted_server import Script, ScriptedServer

# Fast backoff: the tests observe attempts, not waiting.
QUICK_RETRY = {"initial_backoff_s": 0.01, "max_backoff_s": 0.05}
ONE_IMAGE = np.full((28, 28), 7, np.uint8)  # the scripted model answers pixel[0] % 10 = 7
TOKEN = "s3cret-token"
STREAM_IMAGES = 200
STREAM_WINDOW = 4
STREAM_REPLY_DELAY_S = 0.002

STATUS_CLASSES = [
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidInputError),
    (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.OverloadedError),
    (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
    (grpc.StatusCode.UNAUTHENTICATED, errors.UnauthenticatedError),
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError),
    (grpc.StatusCode.INTERNAL, errors.ServerError),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPreconditionError),
    (grpc.StatusCode.ABORTED, errors.MnistServingError),
]


def scripted(script: Script) -> Iterator[ScriptedServer]:
    server = ScriptedServer(script)
    try:
        yield server
    finally:
        server.stop()


def images_with_labels(count: int) -> Iterator[np.ndarray]:
    """Image i answers label i % 10 on the scripted server."""
    for index in range(count):
        yield np.full((28, 28), index % 10, np.uint8)


def collect_labels(stream: Iterator[Prediction], sink: list[int]) -> None:
    """Append each label to `sink` until the stream ends or raises."""
    sink.extend(prediction.label for prediction in stream)


async def async_collect_labels(stream: AsyncIterator[Prediction], sink: list[int]) -> None:
    async for prediction in stream:
        sink.append(prediction.label)


@pytest.mark.parametrize(("code", "error_class"), STATUS_CLASSES)
def test_each_status_raises_its_class_with_the_server_message(code, error_class):
    for server in scripted(Script(always=code)):
        with (
            Client(server.target, retry=RetryPolicy(max_attempts=1)) as client,
            pytest.raises(error_class) as caught,
        ):
            client.classify_one(ONE_IMAGE)
        assert type(caught.value) is error_class
        assert caught.value.code is code
        assert caught.value.message == f"scripted {code.name} on call 1"


@pytest.mark.parametrize(("code", "error_class"), STATUS_CLASSES)
async def test_async_client_raises_the_same_classes(code, error_class):
    for server in scripted(Script(always=code)):
        async with AsyncClient(server.target, retry=RetryPolicy(max_attempts=1)) as client:
            with pytest.raises(error_class) as caught:
                await client.classify_one(ONE_IMAGE)
        assert type(caught.value) is error_class
        assert caught.value.message == f"scripted {code.name} on call 1"


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
def test_two_failures_then_success_takes_three_attempts(code):
    for server in scripted(Script(failures=[code, code])):
        retry = RetryPolicy(max_attempts=3, **QUICK_RETRY)
        with Client(server.target, retry=retry) as client:
            prediction = client.classify_one(ONE_IMAGE)
        assert prediction.label == 7
        assert server.classifier.calls == 3


def test_gives_up_after_the_configured_attempts():
    for server in scripted(Script(always=grpc.StatusCode.UNAVAILABLE)):
        retry = RetryPolicy(max_attempts=2, **QUICK_RETRY)
        with (
            Client(server.target, retry=retry) as client,
            pytest.raises(UnavailableError, match="on call 2"),
        ):
            client.classify_one(ONE_IMAGE)
        assert server.classifier.calls == 2


async def test_async_client_retries_the_same_way():
    for server in scripted(Script(failures=[grpc.StatusCode.UNAVAILABLE] * 2)):
        retry = RetryPolicy(max_attempts=3, **QUICK_RETRY)
        async with AsyncClient(server.target, retry=retry) as client:
            assert (await client.classify_one(ONE_IMAGE)).label == 7
        assert server.classifier.calls == 3


def test_other_errors_are_not_retried():
    for server in scripted(Script(always=grpc.StatusCode.INVALID_ARGUMENT)):
        retry = RetryPolicy(max_attempts=5, **QUICK_RETRY)
        with Client(server.target, retry=retry) as client, pytest.raises(errors.InvalidInputError):
            client.classify_one(ONE_IMAGE)
        assert server.classifier.calls == 1


def test_large_requests_are_retried_too():
    # 1,024 images (~800 KB) exceed gRPC's default 256 KiB retry buffer.
    for server in scripted(Script(failures=[grpc.StatusCode.UNAVAILABLE])):
        with Client(server.target, retry=RetryPolicy(max_attempts=2, **QUICK_RETRY)) as client:
            predictions = client.classify(np.zeros((1024, 28, 28), np.uint8))
        assert len(predictions) == 1024
        assert server.classifier.calls == 2


def test_unreachable_server_is_unavailable_after_retries():
    for server in scripted(Script()):
        target = server.target
    retry = RetryPolicy(max_attempts=2, **QUICK_RETRY)
    with Client(target, retry=retry) as client, pytest.raises(UnavailableError) as caught:
        client.health()
    assert caught.value.code is grpc.StatusCode.UNAVAILABLE


def test_bearer_token_is_sent_as_metadata_on_plaintext():
    for server in scripted(Script(required_authorization=f"Bearer {TOKEN}")):
        with Client(server.target, token=TOKEN) as client:
            assert client.classify_one(ONE_IMAGE).label == 7
        with Client(server.target) as client, pytest.raises(UnauthenticatedError):
            client.classify_one(ONE_IMAGE)
        assert server.classifier.authorizations == [f"Bearer {TOKEN}", None]


def test_mtls_with_token_as_call_credentials(tmp_path: Path):
    files = make_certificates(tmp_path)
    credentials = grpc.ssl_server_credentials(
        [(files.server_key.read_bytes(), files.server_cert.read_bytes())],
        root_certificates=files.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    server = ScriptedServer(Script(required_authorization=f"Bearer {TOKEN}"), credentials)
    try:
        mtls = TlsConfig(
            ca_file=files.ca_cert,
            client_cert_file=files.client_cert,
            client_key_file=files.client_key,
        )
        with Client(server.target, tls=mtls, token=TOKEN) as client:
            assert client.classify_one(ONE_IMAGE).label == 7
        # Without a client certificate the handshake fails: nothing reaches the servicer.
        no_client_cert = TlsConfig(ca_file=files.ca_cert)
        retry = RetryPolicy(max_attempts=1)
        with (
            Client(server.target, tls=no_client_cert, token=TOKEN, retry=retry) as client,
            pytest.raises(UnavailableError),
        ):
            client.classify_one(ONE_IMAGE, timeout_s=5)
        assert server.classifier.authorizations == [f"Bearer {TOKEN}"]
    finally:
        server.stop()


def test_stream_never_exceeds_its_window_and_keeps_order():
    script = Script(stream_reply_delay_s=STREAM_REPLY_DELAY_S)
    for server in scripted(script):
        with Client(server.target, stream_window=STREAM_WINDOW) as client:
            labels = [p.label for p in client.classify_stream(images_with_labels(STREAM_IMAGES))]
        assert labels == [index % 10 for index in range(STREAM_IMAGES)]
        assert server.classifier.stream_received == STREAM_IMAGES
        # Slow replies let requests pile up to the window, never beyond.
        assert server.classifier.max_stream_outstanding == STREAM_WINDOW


async def test_async_stream_never_exceeds_its_window():
    script = Script(stream_reply_delay_s=STREAM_REPLY_DELAY_S)
    for server in scripted(script):
        async with AsyncClient(server.target, stream_window=STREAM_WINDOW) as client:
            stream = client.classify_stream(images_with_labels(STREAM_IMAGES))
            labels = [p.label async for p in stream]
        assert labels == [index % 10 for index in range(STREAM_IMAGES)]
        assert server.classifier.max_stream_outstanding == STREAM_WINDOW


def test_stream_error_raises_after_the_predictions_before_it():
    for server in scripted(Script(stream_error_ids=frozenset({"5"}))):
        received: list[int] = []
        with Client(server.target) as client, pytest.raises(OverloadedError) as caught:
            collect_labels(client.classify_stream(images_with_labels(20)), received)
        assert received == [0, 1, 2, 3, 4]
        assert caught.value.message == "scripted stream error"


async def test_async_stream_error_raises_after_the_predictions_before_it():
    for server in scripted(Script(stream_error_ids=frozenset({"1"}))):
        received: list[int] = []
        async with AsyncClient(server.target, stream_window=2) as client:
            stream = client.classify_stream(images_with_labels(20), images_per_request=3)
            with pytest.raises(OverloadedError):
                await async_collect_labels(stream, received)
        assert received == [0, 1, 2]


def test_stream_failing_to_start_raises_the_status():
    for server in scripted(Script(required_authorization="Bearer other")):
        with Client(server.target, token=TOKEN) as client, pytest.raises(UnauthenticatedError):
            list(client.classify_stream(images_with_labels(3)))


def test_bad_item_mid_stream_raises_after_the_earlier_predictions():
    def items() -> Iterator[object]:
        yield from images_with_labels(3)
        yield np.zeros((28, 28), np.int32)

    for server in scripted(Script()):
        received: list[int] = []
        with (
            Client(server.target) as client,
            pytest.raises(errors.InvalidInputError, match="int32"),
        ):
            collect_labels(client.classify_stream(items()), received)  # type: ignore[arg-type]
        assert received == [0, 1, 2]


def test_abandoned_stream_is_cancelled_and_client_stays_usable():
    for server in scripted(Script(stream_reply_delay_s=STREAM_REPLY_DELAY_S)):
        with Client(server.target, stream_window=STREAM_WINDOW) as client:
            stream = client.classify_stream(images_with_labels(10_000))
            first = [next(stream).label for _ in range(3)]
            stream.close()  # type: ignore[attr-defined]
            assert first == [0, 1, 2]
            assert client.classify_one(ONE_IMAGE).label == 7
        assert server.classifier.stream_received < 100


def test_arguments_are_checked_before_any_call():
    for server in scripted(Script()):
        with Client(server.target) as client:
            with pytest.raises(errors.InvalidInputError, match="top_k"):
                client.classify_stream(images_with_labels(3), top_k=11)
            with pytest.raises(ValueError, match="images_per_request"):
                client.classify_stream(images_with_labels(3), images_per_request=0)
            with pytest.raises(errors.InvalidInputError, match="top_k"):
                client.classify(ONE_IMAGE, top_k=0)
        assert server.classifier.calls == 0


async def test_async_client_accepts_async_iterables():
    async def produce() -> object:
        for image in images_with_labels(12):
            await asyncio.sleep(0)
            yield image

    for server in scripted(Script()):
        async with AsyncClient(server.target) as client:
            stream = client.classify_stream(produce(), images_per_request=5)  # type: ignore[arg-type]
            assert [p.label async for p in stream] == [i % 10 for i in range(12)]


def test_errors_are_all_mnist_serving_errors():
    assert issubclass(UnauthenticatedError, MnistServingError)
