"""The native gRPC front (pygrpc-native, the default --grpc-front) keeps what grpc.aio did
for ModelInfer and Classify: a client's cancellation drops its queued call before compute,
the message size limit, the drain's UNAVAILABLE, one count per call with model, version and
code; and everything else still reaches the grpc.aio server behind it (health, metadata)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.grpc_api.native_front import CLASSIFY, MODEL_INFER, NativeFront
from tests.integration.conftest import RuntimeGate, StartApp, queue_depth
from tests.integration.v2.test_v2_model_infer import one_image_request
from tests.support.metrics import sample_sum
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration
CALL_TIMEOUT_S = 30.0


def counted(app: ServingApp, code: str, method: str = "ModelInfer", **labels: str) -> float:
    return sample_sum(
        app.registry,
        "mnist_serving_requests_total",
        {"protocol": "grpc", "method": method, "code": code, **labels},
    )


def natively_started(app: ServingApp, path: str) -> int:
    """Calls pygrpc-native took for `path` itself (its counters), not forwarded ones."""
    front = app._grpc
    assert isinstance(front, NativeFront)
    counters = front._front.metrics()
    started: int = counters["methods"].get(path, {}).get("started", 0)
    return started


async def test_the_default_front_is_native_and_forwards_what_it_does_not_serve(
    start_app: StartApp,
) -> None:
    app = await start_app()
    assert isinstance(app._grpc, NativeFront)
    async with aio.insecure_channel(app.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        classify = classifier_pb2_grpc.ClassifierStub(channel)
        image = classifier_pb2.Image(pixels=bytes(784))
        reply = await classify.Classify(
            classifier_pb2.ClassifyRequest(images=[image]), timeout=CALL_TIMEOUT_S
        )
        assert len(reply.predictions) == 1
        v2 = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = await v2.ModelInfer(one_image_request(id="n1"), timeout=CALL_TIMEOUT_S)
        assert (answer.id, answer.model_name, answer.model_version) == ("n1", "mnist", "1")
    assert counted(app, "OK", model="mnist", version="1") == 1
    assert counted(app, "OK", method="Classify", model="mnist", version="1") == 1
    assert natively_started(app, CLASSIFY) == 1
    assert natively_started(app, MODEL_INFER) == 1


async def test_native_classify_answers_as_the_grpcio_front_does(
    runtime_gate: RuntimeGate, start_app: StartApp
) -> None:
    app = await start_app()
    async with aio.insecure_channel(app.target) as channel:
        classify = classifier_pb2_grpc.ClassifierStub(channel)
        with pytest.raises(aio.AioRpcError) as wrong_size:
            await classify.Classify(
                classifier_pb2.ClassifyRequest(images=[classifier_pb2.Image(pixels=bytes(5))]),
                timeout=CALL_TIMEOUT_S,
            )
        assert wrong_size.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "images[0].pixels has 5 bytes; expected 784" in (wrong_size.value.details() or "")
        with pytest.raises(aio.AioRpcError) as unknown:
            await classify.Classify(
                classifier_pb2.ClassifyRequest(
                    model_name="nope", images=[classifier_pb2.Image(pixels=bytes(784))]
                ),
                timeout=CALL_TIMEOUT_S,
            )
        assert unknown.value.code() is grpc.StatusCode.NOT_FOUND
        # No serializers: the bytes go as they are.
        raw: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(CLASSIFY)
        with pytest.raises(aio.AioRpcError) as malformed:
            await raw(b"\xff\xff\xff", timeout=CALL_TIMEOUT_S)
        assert malformed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "mnist_serving.v1.ClassifyRequest" in (malformed.value.details() or "")
        # Cancelled while queued: dropped before compute, counted CANCELLED.
        runtime_gate.close()
        image = classifier_pb2.Image(pixels=bytes(784))
        holder = asyncio.ensure_future(
            classify.Classify(
                classifier_pb2.ClassifyRequest(images=[image]), timeout=CALL_TIMEOUT_S
            )
        )
        await runtime_gate.wait_entered()
        leaving = classify.Classify(
            classifier_pb2.ClassifyRequest(images=[image, image]), timeout=CALL_TIMEOUT_S
        )
        leaving_task = asyncio.ensure_future(leaving)
        await wait_until(lambda: queue_depth(app) == 2)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving_task
        await wait_until(lambda: counted(app, "CANCELLED", method="Classify") == 1)
        runtime_gate.open()
        assert len((await holder).predictions) == 1
    assert counted(app, "INVALID_ARGUMENT", method="Classify") == 2
    assert counted(app, "NOT_FOUND", method="Classify") == 1
    assert counted(app, "OK", method="Classify", model="mnist", version="1") == 1
    assert natively_started(app, CLASSIFY) == 5


async def test_a_cancelled_call_is_dropped_before_compute(
    runtime_gate: RuntimeGate, start_app: StartApp
) -> None:
    app = await start_app()
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        runtime_gate.close()
        holder = stub.ModelInfer(one_image_request(id="holder"), timeout=CALL_TIMEOUT_S)
        held = asyncio.ensure_future(holder)
        await runtime_gate.wait_entered()
        leaving = stub.ModelInfer(one_image_request(id="leaving"), timeout=CALL_TIMEOUT_S)
        staying = asyncio.ensure_future(
            stub.ModelInfer(one_image_request(id="staying"), timeout=CALL_TIMEOUT_S)
        )
        leaving_task = asyncio.ensure_future(leaving)
        await wait_until(lambda: queue_depth(app) == 2)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving_task
        # The cancel event reaches the loop from the I/O threads: its future is cancelled.
        await wait_until(lambda: counted(app, "CANCELLED") == 1)
        runtime_gate.open()
        assert (await held).id == "holder"
        assert (await staying).id == "staying"
    statistics = app.dataplane.model("mnist", "").statistics
    assert (statistics.success.count, statistics.fail.count) == (2, 1)
    assert sample_sum(app.registry, "mnist_serving_rejections_total", {"reason": "cancelled"}) == 1


async def test_a_message_over_the_limit_is_refused_before_decoding(start_app: StartApp) -> None:
    app = await start_app(max_message_bytes=4096)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = one_image_request()
        request.raw_input_contents[0] = bytes(8192)
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than the server's limit of 4096" in (caught.value.details() or "")
    assert counted(app, "RESOURCE_EXHAUSTED") == 1


async def test_a_stopping_server_refuses_new_calls_unavailable_and_finishes_the_accepted(
    runtime_gate: RuntimeGate, start_app: StartApp
) -> None:
    app = await start_app()
    front = app._grpc
    assert isinstance(front, NativeFront)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        runtime_gate.close()
        accepted = asyncio.ensure_future(
            stub.ModelInfer(one_image_request(id="accepted"), timeout=CALL_TIMEOUT_S)
        )
        await runtime_gate.wait_entered()
        stopping = asyncio.ensure_future(front.stop(CALL_TIMEOUT_S))
        await wait_until(lambda: front._stopping)
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.ModelInfer(one_image_request(id="late"), timeout=CALL_TIMEOUT_S)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (refused.value.details() or "")
        runtime_gate.open()
        assert (await accepted).id == "accepted"
        await stopping
    assert counted(app, "OK") == 1
    assert counted(app, "UNAVAILABLE") == 1
