"""KServe V2 health and metadata RPCs against a real in-process server."""

from __future__ import annotations

import asyncio
from importlib import metadata

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.app import ServingApp
from tests.integration.conftest import StartApp
from tests.integration.v2.v2_helpers import MODEL_NAME, raw_infer_request
from tests.support.metrics import sample_sum

SERVED_VERSION = "1"


async def test_server_live_and_ready(v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub) -> None:
    assert (await v2_stub.ServerLive(pb.ServerLiveRequest())).live is True
    assert (await v2_stub.ServerReady(pb.ServerReadyRequest())).ready is True


@pytest.mark.parametrize(
    ("name", "version", "ready"),
    [
        (MODEL_NAME, "", True),
        (MODEL_NAME, SERVED_VERSION, True),
        (MODEL_NAME, "2", False),
        ("fashion", "", False),
    ],
)
async def test_model_ready(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub, name: str, version: str, ready: bool
) -> None:
    response = await v2_stub.ModelReady(pb.ModelReadyRequest(name=name, version=version))
    assert response.ready is ready


async def test_server_metadata(v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub) -> None:
    response = await v2_stub.ServerMetadata(pb.ServerMetadataRequest())
    assert response.name == "mnist-serving"
    assert response.version == metadata.version("mnist-serving")
    # Exactly Triton's extensions that are implemented.
    assert sorted(response.extensions) == [
        "classification",
        "model_configuration",
        "model_repository",
        "statistics",
    ]


@pytest.mark.parametrize("version", ["", SERVED_VERSION])
async def test_model_metadata(v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub, version: str) -> None:
    response = await v2_stub.ModelMetadata(
        pb.ModelMetadataRequest(name=MODEL_NAME, version=version)
    )
    assert response.name == MODEL_NAME
    assert list(response.versions) == [SERVED_VERSION]
    assert response.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in response.inputs] == [
        ("pixels", "UINT8", [-1, 1, 28, 28])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in response.outputs] == [
        ("probabilities", "FP32", [-1, 10]),
        ("logits", "FP32", [-1, 10]),
    ]


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("fashion", "", "model 'fashion' is not in the repository; models served: mnist"),
        (MODEL_NAME, "7", "version '7' of model 'mnist' is not served"),
    ],
)
async def test_model_metadata_of_unknown_model_is_not_found(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub, name: str, version: str, message: str
) -> None:
    with pytest.raises(aio.AioRpcError) as caught:
        await v2_stub.ModelMetadata(pb.ModelMetadataRequest(name=name, version=version))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert message in (caught.value.details() or "")


async def test_metadata_rpcs_are_counted_by_method(
    server: ServingApp, v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub
) -> None:
    def count(method: str, code: str) -> float:
        value = sample_sum(
            server.registry, "mnist_serving_requests_total", {"method": method, "code": code}
        )
        return value or 0.0

    before = {m: count(m, "OK") for m in ("ServerLive", "ServerReady", "ModelReady")}
    for _ in range(3):
        await v2_stub.ServerLive(pb.ServerLiveRequest())
    await v2_stub.ServerReady(pb.ServerReadyRequest())
    await v2_stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME))
    not_found_before = count("ModelMetadata", "NOT_FOUND")
    with pytest.raises(aio.AioRpcError):
        await v2_stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert count("ServerLive", "OK") - before["ServerLive"] == 3
    assert count("ServerReady", "OK") - before["ServerReady"] == 1
    assert count("ModelReady", "OK") - before["ModelReady"] == 1
    assert count("ModelMetadata", "NOT_FOUND") - not_found_before == 1


async def test_not_ready_before_warm_up(start_app: StartApp) -> None:
    gate = asyncio.Event()
    app = await start_app(warm_up_gate=gate, wait_ready=False)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live is True
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready is False
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME))).ready is False
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.ModelInfer(raw_infer_request(np.zeros((1, 28, 28), dtype=np.uint8)))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not ready" in (caught.value.details() or "")

        gate.set()
        await app.wait_ready()
        assert (await stub.ServerReady(pb.ServerReadyRequest())).ready is True
        assert (await stub.ModelReady(pb.ModelReadyRequest(name=MODEL_NAME))).ready is True
