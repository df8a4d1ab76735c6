"""The fast per-request path stays correct under concurrency (correctness only, no timings).

Many concurrent callers, single- and multi-image, Classify and KServe V2 (raw contents): every
reply must match ONNX Runtime run directly on the same digits, and the metrics must count
every RPC and image exactly once (they are updated on cached label children now).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_proto import open_inference_pb2 as v2
from mnist_serving_proto import open_inference_pb2_grpc as v2_grpc
from tests.integration.conftest import StartApp
from tests.integration.server.classify_support import ReferenceModel, raw_request
from tests.support.metrics import app_metric

CALLERS = 64
REQUESTS_PER_CALLER = 4
# Caller i sends 1 + i % MAX_EXTRA_IMAGES images per request: batches mix request sizes.
MAX_EXTRA_IMAGES = 5
V2_CALLERS = 32
TOP_K = 3
PARITY_ATOL = 1e-6
RPC_TIMEOUT_S = 60


def digits_for(images: np.ndarray, caller: int, request: int, count: int) -> np.ndarray:
    start = ((caller * REQUESTS_PER_CALLER + request) * count) % (len(images) - count)
    return images[start : start + count]


async def test_concurrent_classify_replies_match_onnx_runtime_and_metrics_add_up(
    start_app: StartApp, model_dir: Path, sample_digits: tuple[Any, Any]
) -> None:
    app = await start_app()
    images, _ = sample_digits
    reference = ReferenceModel(model_dir)
    sent_images = 0

    async def caller(stub: classifier_pb2_grpc.ClassifierAsyncStub, index: int) -> int:
        count = 1 + index % MAX_EXTRA_IMAGES
        for request in range(REQUESTS_PER_CALLER):
            digits = digits_for(images, index, request, count)
            top_k = TOP_K if index % 2 else 0
            reply = await stub.Classify(
                raw_request(digits, top_k=top_k, request_id=f"{index}-{request}"),
                timeout=RPC_TIMEOUT_S,
            )
            expected = reference.probabilities(digits)
            assert reply.request_id == f"{index}-{request}"
            assert [p.label for p in reply.predictions] == expected.argmax(axis=1).tolist()
            for prediction, row in zip(reply.predictions, expected, strict=True):
                np.testing.assert_allclose(prediction.probabilities, row, atol=PARITY_ATOL)
                served = np.array(prediction.probabilities, dtype=np.float32)
                assert prediction.probability == served[prediction.label]
                # top_k ranks the served row (exact ties would keep the lower class first).
                ranked = [score.label for score in prediction.top_k]
                assert ranked == np.argsort(-served, kind="stable")[:top_k].tolist()
                assert [s.probability for s in prediction.top_k] == served[ranked].tolist()
        return count * REQUESTS_PER_CALLER

    async with aio.insecure_channel(app.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        counts = await asyncio.gather(*(caller(stub, index) for index in range(CALLERS)))
    sent_images = sum(counts)
    requests = CALLERS * REQUESTS_PER_CALLER

    assert app_metric(app, "mnist_serving_requests_total", method="Classify", code="OK") == requests
    assert (
        app_metric(app, "mnist_serving_request_duration_seconds_count", method="Classify")
        == requests
    )
    assert app_metric(app, "mnist_serving_batch_size_sum") == sent_images
    # One queue wait per slice: a request split over two batches waited for each of them.
    assert app_metric(app, "mnist_serving_queue_wait_seconds_count") >= requests
    assert app_metric(app, "mnist_serving_inflight_requests") == 0
    assert app_metric(app, "mnist_serving_queue_depth") == 0


async def test_concurrent_v2_raw_replies_are_onnx_runtime_bytes(
    start_app: StartApp, model_dir: Path, sample_digits: tuple[Any, Any]
) -> None:
    app = await start_app()
    images, _ = sample_digits
    reference = ReferenceModel(model_dir)

    async def caller(stub: v2_grpc.GRPCInferenceServiceAsyncStub, index: int) -> None:
        count = 1 + index % MAX_EXTRA_IMAGES
        digits = digits_for(images, index, 0, count)
        request = v2.ModelInferRequest(
            model_name="mnist",
            id=str(index),
            inputs=[
                v2.ModelInferRequest.InferInputTensor(
                    name="pixels", datatype="UINT8", shape=[count, 1, 28, 28]
                )
            ],
            outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
            raw_input_contents=[np.ascontiguousarray(digits, dtype=np.uint8).tobytes()],
        )
        reply = await stub.ModelInfer(request, timeout=RPC_TIMEOUT_S)
        assert reply.id == str(index)
        assert [output.name for output in reply.outputs] == ["probabilities"]
        assert list(reply.outputs[0].shape) == [count, 10]
        served = np.frombuffer(reply.raw_output_contents[0], dtype="<f4").reshape(count, 10)
        np.testing.assert_allclose(served, reference.probabilities(digits), atol=PARITY_ATOL)

    async with aio.insecure_channel(app.target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        await asyncio.gather(*(caller(stub, index) for index in range(V2_CALLERS)))
    assert app_metric(app, "mnist_serving_requests_total", method="ModelInfer", code="OK") == (
        V2_CALLERS
    )


async def test_a_failed_request_is_counted_once_with_its_code(start_app: StartApp) -> None:
    app = await start_app()
    async with aio.insecure_channel(app.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        bad = classifier_pb2.ClassifyRequest(images=[classifier_pb2.Image(pixels=b"\0" * 3)])
        with pytest.raises(aio.AioRpcError) as error:
            await stub.Classify(bad, timeout=RPC_TIMEOUT_S)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        app_metric(app, "mnist_serving_requests_total", method="Classify", code="INVALID_ARGUMENT")
        == 1
    )
    assert app_metric(app, "mnist_serving_requests_total", method="Classify", code="OK") == 0
    assert app_metric(app, "mnist_serving_inflight_requests") == 0
