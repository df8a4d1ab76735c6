"""ModelStreamInfer (order, ids, per-request errors) and the batcher shared with Classify."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from grpc import aio

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.app import ServingApp
from tests.integration.conftest import RuntimeGate, StartApp, queue_depth
from tests.integration.v2.v2_helpers import (
    MODEL_NAME,
    output_array,
    raw_infer_request,
    reference_outputs,
)
from tests.support.metrics import sample_sum
from tests.support.waiting import wait_until

# On both gRPC fronts (tests/conftest.py): each has its own error and stream paths.
pytestmark = pytest.mark.both_grpc_fronts

TOLERANCE = 1e-6
STREAM_REQUESTS = 40
BAD_EVERY = 7  # every 7th stream request is malformed
CALLS_PER_API = 12
# The batch-size bucket just below 2 * CALLS_PER_API (buckets are 1, 2, 4, 8, 16, 24).
LARGEST_BUCKET_BELOW = 16


def sample(sample_digits: tuple[Any, Any], count: int) -> np.ndarray:
    return np.ascontiguousarray(sample_digits[0][:count], dtype=np.uint8)


async def test_stream_replies_in_order_with_ids_and_per_request_errors(
    server: ServingApp,
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
    reference_session: ort.InferenceSession,
    sample_digits: tuple[Any, Any],
) -> None:
    images = sample(sample_digits, STREAM_REQUESTS)
    expected = reference_outputs(reference_session, images)

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        for index in range(STREAM_REQUESTS):
            request = raw_infer_request(images[index : index + 1], request_id=f"r{index}")
            if index % BAD_EVERY == BAD_EVERY - 1:
                request.raw_input_contents[0] = b"short"
            yield request

    before = sample_sum(
        server.registry,
        "mnist_serving_requests_total",
        {"method": "ModelStreamInfer", "code": "OK"},
    )
    replies = [reply async for reply in v2_stub.ModelStreamInfer(requests())]
    assert [r.infer_response.id for r in replies] == [f"r{i}" for i in range(STREAM_REQUESTS)]
    for index, reply in enumerate(replies):
        if index % BAD_EVERY == BAD_EVERY - 1:
            assert reply.error_message.startswith("INVALID_ARGUMENT: ")
            assert "holds 5 bytes, expected 784 bytes" in reply.error_message
            assert len(reply.infer_response.outputs) == 0
        else:
            assert reply.error_message == ""
            np.testing.assert_allclose(
                output_array(reply.infer_response, "probabilities")[0],
                expected["probabilities"][index],
                atol=TOLERANCE,
            )
    after = sample_sum(
        server.registry,
        "mnist_serving_requests_total",
        {"method": "ModelStreamInfer", "code": "OK"},
    )
    assert (after or 0) - (before or 0) == 1  # a stream counts once, when it ends


async def test_stream_unknown_model_is_reported_in_the_reply(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    request = raw_infer_request(np.zeros((1, 28, 28), dtype=np.uint8), request_id="x")
    request.model_name = "fashion"

    async def one() -> AsyncIterator[pb.ModelInferRequest]:
        yield request

    replies = [reply async for reply in v2_stub.ModelStreamInfer(one())]
    assert len(replies) == 1
    assert replies[0].error_message.startswith(
        "NOT_FOUND: model 'fashion' is not in the repository"
    )
    assert replies[0].infer_response.id == "x"


async def test_stream_with_no_requests_ends_cleanly(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    async def none() -> AsyncIterator[pb.ModelInferRequest]:
        return
        yield  # pragma: no cover - makes this an async generator

    assert [reply async for reply in v2_stub.ModelStreamInfer(none())] == []


def histogram(app: ServingApp, suffix: str, labels: dict[str, str] | None = None) -> float:
    return sample_sum(app.registry, f"mnist_serving_batch_size_{suffix}", labels) or 0.0


def batches_above(app: ServingApp, size: int, limit: int) -> float:
    """Batches of more than `size` and at most `limit` images (two bucket bounds)."""
    upper = histogram(app, "bucket", {"le": str(float(limit))})
    return upper - histogram(app, "bucket", {"le": str(float(size))})


async def test_v2_and_classify_calls_share_batches(
    runtime_gate: RuntimeGate,
    start_app: StartApp,
    reference_session: ort.InferenceSession,
    sample_digits: tuple[Any, Any],
) -> None:
    max_batch = 2 * CALLS_PER_API
    app = await start_app(max_batch_size=max_batch)
    images = sample(sample_digits, max_batch)
    expected = reference_outputs(reference_session, images)
    async with aio.insecure_channel(app.target) as channel:
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        classify = classifier_pb2_grpc.ClassifierStub(channel)
        count_before, sum_before = histogram(app, "count"), histogram(app, "sum")
        large_before = batches_above(app, LARGEST_BUCKET_BELOW, max_batch)

        # Hold the runtime with one call, so every call below waits in the same queue.
        runtime_gate.close()
        holder = asyncio.ensure_future(v2.ModelInfer(raw_infer_request(images[:1])))
        await runtime_gate.wait_entered()
        v2_calls = [
            asyncio.ensure_future(v2.ModelInfer(raw_infer_request(images[i : i + 1])))
            for i in range(CALLS_PER_API)
        ]
        classify_calls = [
            asyncio.ensure_future(
                classify.Classify(
                    classifier_pb2.ClassifyRequest(
                        images=[classifier_pb2.Image(pixels=images[i].tobytes())]
                    )
                )
            )
            for i in range(CALLS_PER_API, max_batch)
        ]
        await wait_until(lambda: queue_depth(app) == max_batch)
        runtime_gate.open()
        await holder
        v2_replies = await asyncio.gather(*v2_calls)
        classify_replies = await asyncio.gather(*classify_calls)

    # Two batches: the holder alone, then all 24 queued images -- 12 of each API -- together.
    assert histogram(app, "count") - count_before == 2
    assert histogram(app, "sum") - sum_before == 1 + max_batch
    assert batches_above(app, LARGEST_BUCKET_BELOW, max_batch) - large_before == 1
    # And each caller got its own image's answer out of the shared batch.
    for index, reply in enumerate(v2_replies):
        np.testing.assert_allclose(
            output_array(reply, "probabilities")[0],
            expected["probabilities"][index],
            atol=TOLERANCE,
        )
    for offset, classified in enumerate(classify_replies):
        np.testing.assert_allclose(
            np.array(classified.predictions[0].probabilities),
            expected["probabilities"][CALLS_PER_API + offset],
            atol=TOLERANCE,
        )


async def test_cancelled_stream_leaves_the_server_healthy(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub, sample_digits: tuple[Any, Any]
) -> None:
    release = asyncio.Event()

    async def requests() -> AsyncIterator[pb.ModelInferRequest]:
        yield raw_infer_request(sample(sample_digits, 1), request_id="first")
        await release.wait()  # the client cancels while the stream is open

    call = v2_stub.ModelStreamInfer(requests())
    first = await call.read()
    assert isinstance(first, pb.ModelStreamInferResponse)
    assert first.infer_response.id == "first"
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.read()
    # The server goes on answering.
    response = await v2_stub.ModelInfer(raw_infer_request(sample(sample_digits, 1)))
    assert response.model_name == MODEL_NAME
    assert (await v2_stub.ServerReady(pb.ServerReadyRequest())).ready
