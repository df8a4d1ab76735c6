"""Every row of the error table (grpc_errors.py), provoked for real: status code AND message."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.core.runtime import ModelRuntime
from mnist_serving_server.grpc_api.drain_gate import HOLD_LIMIT_S
from mnist_serving_server.grpc_api.front import GrpcFront
from mnist_serving_server.grpc_api.grpc_errors import INTERNAL_MESSAGE
from tests.integration.conftest import RuntimeGate, StartApp, queue_depth
from tests.integration.server.classify_support import raw_request
from tests.support.metrics import app_metric
from tests.support.waiting import wait_until

Digits = tuple[Any, Any]
# On both gRPC fronts (tests/conftest.py): each has its own error and stream paths.
pytestmark = pytest.mark.both_grpc_fronts

ONE_DIGIT = np.zeros((1, 28, 28), dtype=np.uint8)
TINY_QUEUE_IMAGES = 4
SHORT_DEADLINE_S = 0.3
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Failure:
    code: grpc.StatusCode
    details: str


async def classify_error(
    stub: classifier_pb2_grpc.ClassifierAsyncStub,
    request: classifier_pb2.ClassifyRequest,
    **call_options: Any,
) -> Failure:
    """The status of a Classify call that must fail."""
    with pytest.raises(aio.AioRpcError) as caught:
        await stub.Classify(request, **call_options)
    return Failure(caught.value.code(), caught.value.details() or "")


def stub_for(channel: aio.Channel) -> classifier_pb2_grpc.ClassifierAsyncStub:
    return classifier_pb2_grpc.ClassifierStub(channel)


async def test_wrong_pixel_size_names_the_image_and_the_expected_size(
    server: ServingApp, classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub
) -> None:
    request = classifier_pb2.ClassifyRequest(
        images=[classifier_pb2.Image(pixels=bytes(784)), classifier_pb2.Image(pixels=bytes(783))]
    )
    error = await classify_error(classifier_stub, request)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == (
        "images[1].pixels has 783 bytes; expected 784 (28x28 uint8, row-major)"
    )
    # The server counts the call as its handler ends, a moment after the client has the reply.
    # Counted before the status went out: no waiting needed.
    assert (
        app_metric(
            server, "mnist_serving_requests_total", method="Classify", code="INVALID_ARGUMENT"
        )
        == 1
    )


async def test_undecodable_png_is_invalid_argument(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
) -> None:
    request = classifier_pb2.ClassifyRequest(
        images=[classifier_pb2.Image(encoded=PNG_SIGNATURE + b"not really a png" * 4)]
    )
    error = await classify_error(classifier_stub, request)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details.startswith("images[0].encoded: ")
    assert "Traceback" not in error.details


async def test_image_without_data_is_invalid_argument(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
) -> None:
    request = classifier_pb2.ClassifyRequest(
        images=[classifier_pb2.Image(pixels=bytes(784)), classifier_pb2.Image()]
    )
    error = await classify_error(classifier_stub, request)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "images[1] has no data" in error.details


async def test_empty_request_is_invalid_argument(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
) -> None:
    error = await classify_error(classifier_stub, classifier_pb2.ClassifyRequest())
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "the request has no images" in error.details


async def test_too_many_images_names_the_limit(start_app: StartApp) -> None:
    app = await start_app(max_images_per_request=4)
    async with aio.insecure_channel(app.target) as channel:
        error = await classify_error(stub_for(channel), raw_request(np.zeros((5, 28, 28))))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "the request has 5 images" in error.details
    assert "at most 4 per request" in error.details


async def test_top_k_above_the_class_count_is_invalid_argument(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
) -> None:
    error = await classify_error(classifier_stub, raw_request(ONE_DIGIT, top_k=11))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details == "top_k is 11; at most 10 (the number of classes)"


@pytest.mark.parametrize(
    ("fields", "named"),
    [({"model_name": "resnet"}, "'resnet'"), ({"model_version": "99"}, "'99'")],
)
async def test_unknown_model_or_version_is_not_found(
    classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub,
    fields: dict[str, str],
    named: str,
) -> None:
    error = await classify_error(classifier_stub, raw_request(ONE_DIGIT, **fields))
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert named in error.details
    assert "served: mnist" in error.details or "versions served: 1" in error.details


async def test_message_over_the_size_limit_is_refused(start_app: StartApp) -> None:
    app = await start_app(max_message_bytes=10_000)
    async with aio.insecure_channel(app.target) as channel:
        error = await classify_error(stub_for(channel), raw_request(np.zeros((20, 28, 28))))
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_request_larger_than_the_queue_is_invalid_not_load(start_app: StartApp) -> None:
    # Permanent: retrying can never succeed, so it must not look like load shedding.
    app = await start_app(
        max_queue_size=TINY_QUEUE_IMAGES, max_images_per_request=TINY_QUEUE_IMAGES
    )
    async with aio.insecure_channel(app.target) as channel:
        error = await classify_error(stub_for(channel), raw_request(np.zeros((5, 28, 28))))
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 4 per request" in error.details


async def test_full_queue_is_resource_exhausted_and_queued_calls_still_complete(
    start_app: StartApp, runtime_gate: RuntimeGate
) -> None:
    app = await start_app(
        max_queue_size=TINY_QUEUE_IMAGES,
        max_batch_size=TINY_QUEUE_IMAGES,
        max_images_per_request=TINY_QUEUE_IMAGES,
    )
    async with aio.insecure_channel(app.target) as channel:
        stub = stub_for(channel)
        runtime_gate.close()
        in_compute = asyncio.ensure_future(stub.Classify(raw_request(ONE_DIGIT)))
        await runtime_gate.wait_entered()
        queued = asyncio.ensure_future(stub.Classify(raw_request(np.zeros((4, 28, 28)))))
        await wait_until(
            lambda: queue_depth(app) == TINY_QUEUE_IMAGES,
            "a full queue",
        )

        error = await classify_error(stub, raw_request(ONE_DIGIT))

        runtime_gate.open()
        assert len((await in_compute).predictions) == 1
        assert len((await queued).predictions) == TINY_QUEUE_IMAGES
    assert error.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details == "queue full: 4 images queued, limit 4; retry with backoff"
    assert app_metric(app, "mnist_serving_rejections_total", reason="queue_full") == 1


async def test_deadline_too_short_is_dropped_before_compute(
    start_app: StartApp, runtime_gate: RuntimeGate
) -> None:
    """The caller sees DEADLINE_EXCEEDED and the server never computes the request.

    (The server drops it as "deadline" or, if gRPC cancels the handler first when the
    deadline fires, as "cancelled": either way it never reaches ONNX Runtime.)
    """
    app = await start_app()
    async with aio.insecure_channel(app.target) as channel:
        stub = stub_for(channel)
        images_before = app_metric(app, "mnist_serving_batch_size_sum")
        runtime_gate.close()
        in_compute = asyncio.ensure_future(stub.Classify(raw_request(ONE_DIGIT)))
        await runtime_gate.wait_entered()

        error = await classify_error(stub, raw_request(ONE_DIGIT), timeout=SHORT_DEADLINE_S)

        runtime_gate.open()
        await in_compute
        await wait_until(
            lambda: (
                app_metric(app, "mnist_serving_rejections_total", reason="deadline")
                + app_metric(app, "mnist_serving_rejections_total", reason="cancelled")
                == 1
            ),
            "the expired request to be dropped",
        )
        assert len((await stub.Classify(raw_request(ONE_DIGIT))).predictions) == 1
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "deadline" in error.details.lower()
    # Only the held call and the call after it were computed.
    assert app_metric(app, "mnist_serving_batch_size_sum") == images_before + 2


async def test_cancelled_call_is_dropped_and_the_server_stays_healthy(
    start_app: StartApp, runtime_gate: RuntimeGate
) -> None:
    app = await start_app()
    async with aio.insecure_channel(app.target) as channel:
        stub = stub_for(channel)
        runtime_gate.close()
        in_compute = asyncio.ensure_future(stub.Classify(raw_request(ONE_DIGIT)))
        await runtime_gate.wait_entered()
        call = stub.Classify(raw_request(ONE_DIGIT))
        await wait_until(lambda: queue_depth(app) == 1, "a queued call")

        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        await wait_until(
            lambda: (
                app_metric(app, "mnist_serving_requests_total", method="Classify", code="CANCELLED")
                == 1
            ),
            "the server to see the cancellation",
        )
        runtime_gate.open()
        await in_compute
        await wait_until(
            lambda: app_metric(app, "mnist_serving_rejections_total", reason="cancelled") == 1,
            "the cancelled request to be dropped",
        )
        assert len((await stub.Classify(raw_request(ONE_DIGIT))).predictions) == 1
    assert await call.code() is grpc.StatusCode.CANCELLED


async def test_not_ready_is_unavailable(start_app: StartApp) -> None:
    gate = asyncio.Event()
    app = await start_app(warm_up_gate=gate, wait_ready=False)
    async with aio.insecure_channel(app.target) as channel:
        error = await classify_error(stub_for(channel), raw_request(ONE_DIGIT))
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert "not ready" in error.details
        assert app_metric(app, "mnist_serving_rejections_total", reason="not_ready") == 1
        gate.set()
        await app.wait_ready()
        assert len((await stub_for(channel).Classify(raw_request(ONE_DIGIT))).predictions) == 1


async def test_runtime_failure_is_internal_with_a_generic_message(
    start_app: StartApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A model failure (mocked: we cannot make ONNX Runtime fail on demand) never leaks."""
    failing = False
    original_run = ModelRuntime.run

    def run_or_fail(self: ModelRuntime, pixels: np.ndarray) -> dict[str, np.ndarray]:
        if failing:
            raise RuntimeError("CUDA out of memory at /secret/path/kernel.cu:42")
        return original_run(self, pixels)

    monkeypatch.setattr(ModelRuntime, "run", run_or_fail)
    app = await start_app()  # warm-up runs the real model
    failing = True
    async with aio.insecure_channel(app.target) as channel:
        error = await classify_error(stub_for(channel), raw_request(ONE_DIGIT))
        failing = False
        # A failed batch fails its callers only: the next call is served.
        assert len((await stub_for(channel).Classify(raw_request(ONE_DIGIT))).predictions) == 1
    assert error.code is grpc.StatusCode.INTERNAL
    assert error.details == INTERNAL_MESSAGE
    assert "CUDA out of memory" in caplog.text
    assert app_metric(app, "mnist_serving_requests_total", method="Classify", code="INTERNAL") == 1


# --- refused before the servicer runs: still counted once, with the code ------------------

CLASSIFY_PATH = "/mnist_serving.v1.Classifier/Classify"


def counted(app: ServingApp, code: str) -> tuple[float, float]:
    """(requests_total, duration observations) of Classify with `code` (model unknown)."""
    total = app_metric(app, "mnist_serving_requests_total", method="Classify", code=code)
    durations = app_metric(
        app, "mnist_serving_request_duration_seconds_count", method="Classify", model=""
    )
    return total, durations


async def test_undecodable_protobuf_is_counted_once_as_invalid_argument(server: ServingApp) -> None:
    before = counted(server, "INVALID_ARGUMENT")
    async with aio.insecure_channel(server.target) as channel:
        call: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(CLASSIFY_PATH)
        with pytest.raises(aio.AioRpcError) as caught:
            await call(b"\xff\xff\xff\xff")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert counted(server, "INVALID_ARGUMENT") == (before[0] + 1, before[1] + 1)


def close_the_door(app: ServingApp) -> None:
    """What the grpc.aio front's stop() does first, once the drain delay is over (the native
    front's drain: tests/integration/v2/test_v2_native_front.py)."""
    front = app._grpc
    assert isinstance(front, GrpcFront)
    front.gate.close()


async def test_call_refused_while_draining_is_unavailable_and_counted(start_app: StartApp) -> None:
    app = await start_app(grpc_front="grpcio")
    close_the_door(app)
    async with aio.insecure_channel(app.target) as channel:
        # Held until just before its deadline (nobody releases the gate), then refused.
        error = await classify_error(stub_for(channel), raw_request(ONE_DIGIT), timeout=0.5)
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in error.details
    assert counted(app, "UNAVAILABLE") == (1, 1)
    assert app_metric(app, "mnist_serving_rejections_total", reason="not_ready") == 1


async def test_a_refusal_without_deadline_is_held_at_most_the_hold_limit(
    start_app: StartApp,
) -> None:
    app = await start_app(grpc_front="grpcio")
    close_the_door(app)
    async with aio.insecure_channel(app.target) as channel:
        started = time.monotonic()
        error = await classify_error(stub_for(channel), raw_request(ONE_DIGIT))
    assert error.code is grpc.StatusCode.UNAVAILABLE
    assert HOLD_LIMIT_S <= time.monotonic() - started < HOLD_LIMIT_S + 2.0
