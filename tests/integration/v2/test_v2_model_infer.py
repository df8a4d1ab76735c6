"""KServe V2 ModelInfer against a real in-process server: answers, encodings, errors."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc import aio

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.core.tensors import MICROSECONDS_PER_SECOND
from tests.integration.conftest import RuntimeGate, StartApp, queue_depth
from tests.integration.v2.v2_helpers import (
    INPUT_NAME,
    MODEL_NAME,
    output_array,
    raw_infer_request,
    reference_outputs,
    typed_infer_request,
)
from tests.support.metrics import sample_sum
from tests.support.waiting import wait_until

TOLERANCE = 1e-6
DIGITS = 16
# `timeout` parameters: one that expires while the runtime is held closed, one that cannot.
SHORT_TIMEOUT_US = 1_000
SHORT_TIMEOUT_S = SHORT_TIMEOUT_US / MICROSECONDS_PER_SECOND
LONG_TIMEOUT_US = 60_000_000


def digits(sample_digits: tuple[Any, Any], count: int = DIGITS) -> np.ndarray:
    images, _ = sample_digits
    return np.ascontiguousarray(images[:count], dtype=np.uint8)


async def expect_error(call: Any, code: grpc.StatusCode, *fragments: str) -> str:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details() or ""
    for fragment in fragments:
        assert fragment in details
    return details


async def test_raw_uint8_answers_like_onnx_runtime_in_raw_outputs(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
    reference_session: ort.InferenceSession,
    sample_digits: tuple[Any, Any],
) -> None:
    images = digits(sample_digits)
    response = await v2_stub.ModelInfer(raw_infer_request(images, request_id="req-42"))
    assert response.id == "req-42"
    assert response.model_name == MODEL_NAME
    assert response.model_version == "1"
    assert [t.name for t in response.outputs] == ["probabilities", "logits"]
    assert len(response.raw_output_contents) == 2
    assert all(not t.HasField("contents") for t in response.outputs)
    expected = reference_outputs(reference_session, images)
    for name in ("probabilities", "logits"):
        np.testing.assert_allclose(output_array(response, name), expected[name], atol=TOLERANCE)
    probabilities = output_array(response, "probabilities")
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=TOLERANCE)
    _, labels = sample_digits
    # The model is ~97% accurate: most of these real digits come out right.
    assert (probabilities.argmax(axis=1) == np.asarray(labels[:DIGITS])).mean() > 0.8


async def test_typed_inputs_get_typed_outputs(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
    reference_session: ort.InferenceSession,
    sample_digits: tuple[Any, Any],
) -> None:
    images = digits(sample_digits, 3)
    response = await v2_stub.ModelInfer(typed_infer_request(images))
    assert len(response.raw_output_contents) == 0
    assert all(len(t.contents.fp32_contents) == 3 * 10 for t in response.outputs)
    expected = reference_outputs(reference_session, images)
    np.testing.assert_allclose(
        output_array(response, "probabilities"), expected["probabilities"], atol=TOLERANCE
    )


@pytest.mark.parametrize("build", [raw_infer_request, typed_infer_request])
async def test_fp32_to_tensor_pixels_answer_exactly_like_uint8(
    server: ServingApp,
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
    sample_digits: tuple[Any, Any],
    build: Any,
) -> None:
    # One image per call: both land in batches of one, so even the float bits must agree.
    for image in digits(sample_digits, 4):
        as_uint8 = await v2_stub.ModelInfer(build(image[None], datatype="UINT8"))
        as_fp32 = await v2_stub.ModelInfer(build(image[None], datatype="FP32"))
        for name in ("probabilities", "logits"):
            np.testing.assert_array_equal(output_array(as_fp32, name), output_array(as_uint8, name))


async def test_requested_outputs_only_and_in_order(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub, sample_digits: tuple[Any, Any]
) -> None:
    request = raw_infer_request(digits(sample_digits, 2))
    request.outputs.add(name="logits")
    response = await v2_stub.ModelInfer(request)
    assert [t.name for t in response.outputs] == ["logits"]
    assert len(response.raw_output_contents) == 1
    request.outputs.add(name="probabilities")
    response = await v2_stub.ModelInfer(request)
    assert [t.name for t in response.outputs] == ["logits", "probabilities"]


async def test_served_version_and_default_model_name_are_accepted(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub, sample_digits: tuple[Any, Any]
) -> None:
    request = raw_infer_request(digits(sample_digits, 1))
    request.model_version = "1"
    assert (await v2_stub.ModelInfer(request)).model_version == "1"


# --- errors --------------------------------------------------------------------------------


def one_image_request(**changes: Any) -> pb.ModelInferRequest:
    request = raw_infer_request(np.zeros((1, 28, 28), dtype=np.uint8))
    for field, value in changes.items():
        setattr(request, field, value)
    return request


async def test_unknown_model_or_version_is_not_found(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    await expect_error(
        v2_stub.ModelInfer(one_image_request(model_name="fashion")),
        grpc.StatusCode.NOT_FOUND,
        "model 'fashion' is not in the repository",
        "models served: mnist",
    )
    await expect_error(
        v2_stub.ModelInfer(one_image_request(model_version="3")),
        grpc.StatusCode.NOT_FOUND,
        "version '3' of model 'mnist' is not served",
    )


async def test_wrong_datatype_names_the_expected_datatypes_and_shapes(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    request = one_image_request()
    request.inputs[0].datatype = "INT64"
    await expect_error(
        v2_stub.ModelInfer(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "datatype 'INT64' is not accepted",
        "UINT8",
        "FP32",
        "UINT8 [N,1,28,28]",
    )


async def test_wrong_shape_names_the_expected_shapes(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    request = one_image_request()
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([1, 784])
    await expect_error(
        v2_stub.ModelInfer(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [1,784] is not accepted",
        "UINT8 [N,1,28,28]",
    )


async def test_raw_buffer_of_the_wrong_length(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    request = one_image_request()
    request.raw_input_contents[0] = b"\0" * 700
    await expect_error(
        v2_stub.ModelInfer(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "holds 700 bytes, expected 784 bytes",
    )


async def test_fp32_out_of_range_is_invalid(v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub) -> None:
    request = one_image_request()
    request.inputs[0].datatype = "FP32"
    request.raw_input_contents[0] = np.full(784, 255.0, dtype="<f4").tobytes()
    await expect_error(
        v2_stub.ModelInfer(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "in [0,1]",
        "send 0-255 values as UINT8",
    )


async def test_unknown_output_lists_the_model_outputs(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    request = one_image_request()
    request.outputs.add(name="scores")
    await expect_error(
        v2_stub.ModelInfer(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown output 'scores'",
        "'probabilities', 'logits'",
    )


async def test_wrong_input_name(v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub) -> None:
    request = one_image_request()
    request.inputs[0].name = "input__0"
    await expect_error(
        v2_stub.ModelInfer(request),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the model takes one input '{INPUT_NAME}'",
    )


async def test_too_many_images(start_app: StartApp) -> None:
    app = await start_app(max_images_per_request=2)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await expect_error(
            stub.ModelInfer(raw_infer_request(np.zeros((3, 28, 28), dtype=np.uint8))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "batch of 3 is too large; at most 2",
        )


async def test_timeout_parameter_bounds_the_time_in_the_queue(
    runtime_gate: RuntimeGate, start_app: StartApp
) -> None:
    app = await start_app()
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        runtime_gate.close()
        holder = asyncio.ensure_future(stub.ModelInfer(one_image_request(id="holder")))
        await runtime_gate.wait_entered()  # the runtime is busy: the next requests queue
        short = one_image_request(id="short")
        short.parameters["timeout"].int64_param = SHORT_TIMEOUT_US
        long = one_image_request(id="long")
        long.parameters["timeout"].int64_param = LONG_TIMEOUT_US
        short_call = asyncio.ensure_future(stub.ModelInfer(short))
        long_call = asyncio.ensure_future(stub.ModelInfer(long))
        await wait_until(lambda: queue_depth(app) == 2)  # both queued behind the holder
        # The server set the short deadline (its time.monotonic() at arrival + the timeout)
        # before the request was queued, so before now: it has passed once this holds.
        expired_at = time.monotonic() + SHORT_TIMEOUT_S
        await wait_until(lambda: time.monotonic() > expired_at)
        runtime_gate.open()
        assert (await holder).id == "holder"
        assert (await long_call).id == "long"
        await expect_error(short_call, grpc.StatusCode.DEADLINE_EXCEEDED)
    rejected = sample_sum(app.registry, "mnist_serving_rejections_total", {"reason": "deadline"})
    assert rejected == 1


async def test_negative_timeout_parameter_is_invalid(
    v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub,
) -> None:
    request = one_image_request()
    request.parameters["timeout"].int64_param = -1
    await expect_error(
        v2_stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "'timeout' must be >= 0"
    )


async def test_queue_full_is_resource_exhausted(
    runtime_gate: RuntimeGate, start_app: StartApp
) -> None:
    app = await start_app(max_queue_size=2, max_images_per_request=2)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        runtime_gate.close()
        holder = asyncio.ensure_future(stub.ModelInfer(one_image_request()))
        await runtime_gate.wait_entered()
        two = raw_infer_request(np.zeros((2, 28, 28), dtype=np.uint8))
        queued = asyncio.ensure_future(stub.ModelInfer(two))
        await wait_until(lambda: queue_depth(app) == 2)
        await expect_error(
            stub.ModelInfer(one_image_request()), grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full"
        )
        runtime_gate.open()
        await holder
        await queued


async def test_infer_metrics_count_each_call_by_code(
    server: ServingApp, v2_stub: pb_grpc.GRPCInferenceServiceAsyncStub
) -> None:
    def count(code: str) -> float:
        labels = {"method": "ModelInfer", "code": code}
        return sample_sum(server.registry, "mnist_serving_requests_total", labels) or 0.0

    ok_before, invalid_before = count("OK"), count("INVALID_ARGUMENT")
    for _ in range(3):
        await v2_stub.ModelInfer(one_image_request())
    bad = one_image_request()
    bad.inputs[0].datatype = "BOOL"
    with pytest.raises(aio.AioRpcError):
        await v2_stub.ModelInfer(bad)
    assert count("OK") - ok_before == 3
    assert count("INVALID_ARGUMENT") - invalid_before == 1
