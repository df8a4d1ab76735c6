"""NVIDIA's tritonclient[grpc], a real third-party V2 client, against our server process.

Its own pytest process (`make test-interop`): see conftest.py for why.
"""

from __future__ import annotations

import queue
import re
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from tests.support.server_process import REPO_ROOT, ServerProcess

MODEL_NAME = "mnist"
MODEL_VERSION = "1"
INPUT_NAME = "pixels"
DIGITS = 8
TOLERANCE = 1e-6
CALLBACK_WAIT_S = 30.0
STREAM_REQUESTS = 10
BAD_STREAM_INDEX = 4
SHORT_TIMEOUT_US = 1  # Triton's `timeout` parameter (microseconds): already past when queued


@pytest.fixture(scope="module")
def client(v2_server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(v2_server.target) as triton_client:
        yield triton_client


@pytest.fixture(scope="module")
def digits(sample_digits: tuple[Any, Any]) -> np.ndarray:
    return np.ascontiguousarray(sample_digits[0][:DIGITS], dtype=np.uint8)


@pytest.fixture(scope="module")
def classify_probabilities(v2_server: ServerProcess, digits: np.ndarray) -> np.ndarray:
    """What our own Classify API answers for the same digits (the expected V2 answers)."""
    with grpc.insecure_channel(v2_server.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        request = classifier_pb2.ClassifyRequest(
            images=[classifier_pb2.Image(pixels=image.tobytes()) for image in digits]
        )
        reply = stub.Classify(request)
    return np.array([list(p.probabilities) for p in reply.predictions], dtype=np.float32)


def uint8_input(images: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(INPUT_NAME, [len(images), 1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(images.reshape(len(images), 1, 28, 28))  # raw (binary) data
    return tensor


def fp32_input(images: np.ndarray) -> triton.InferInput:
    """torchvision ToTensor's convention: pixel / 255 in [0,1], shape [N,28,28]."""
    tensor = triton.InferInput(INPUT_NAME, [len(images), 28, 28], "FP32")
    tensor.set_data_from_numpy(images.astype(np.float32) / np.float32(255))
    return tensor


def test_health(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL_NAME)
    assert client.is_model_ready(MODEL_NAME, MODEL_VERSION)
    assert not client.is_model_ready(MODEL_NAME, "2")
    assert not client.is_model_ready("fashion")


def test_server_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "mnist-serving"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", metadata["version"])
    # Exactly the extensions implemented (test_interop_repository checks each one works).
    assert sorted(metadata["extensions"]) == [
        "classification",
        "model_configuration",
        "model_repository",
        "statistics",
    ]


def test_model_metadata(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(MODEL_NAME)
    assert metadata.name == MODEL_NAME
    assert list(metadata.versions) == [MODEL_VERSION]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        (INPUT_NAME, "UINT8", [-1, 1, 28, 28])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("probabilities", "FP32", [-1, 10]),
        ("logits", "FP32", [-1, 10]),
    ]


def test_infer_uint8_equals_classify(
    client: triton.InferenceServerClient, digits: np.ndarray, classify_probabilities: np.ndarray
) -> None:
    result = client.infer(MODEL_NAME, [uint8_input(digits)], request_id="uint8")
    assert result.get_response().id == "uint8"
    assert result.get_response().model_version == MODEL_VERSION
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32
    assert probabilities.shape == (DIGITS, 10)
    np.testing.assert_allclose(probabilities, classify_probabilities, atol=TOLERANCE)
    assert result.as_numpy("logits").shape == (DIGITS, 10)


def test_infer_fp32_equals_classify(
    client: triton.InferenceServerClient, digits: np.ndarray, classify_probabilities: np.ndarray
) -> None:
    outputs = [triton.InferRequestedOutput("probabilities")]
    result = client.infer(MODEL_NAME, [fp32_input(digits)], outputs=outputs)
    assert result.as_numpy("logits") is None  # only what was requested
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), classify_probabilities, atol=TOLERANCE
    )


def test_async_infer(
    client: triton.InferenceServerClient, digits: np.ndarray, classify_probabilities: np.ndarray
) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.async_infer(
        MODEL_NAME,
        [uint8_input(digits)],
        lambda result, error: results.put((result, error)),
        request_id="async",
    )
    result, error = results.get(timeout=CALLBACK_WAIT_S)
    assert error is None
    assert result.get_response().id == "async"
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), classify_probabilities, atol=TOLERANCE
    )


async def test_aio_client(
    v2_server: ServerProcess, digits: np.ndarray, classify_probabilities: np.ndarray
) -> None:
    async with triton_aio.InferenceServerClient(v2_server.target) as aio_client:
        assert await aio_client.is_server_ready()
        assert await aio_client.is_model_ready(MODEL_NAME)
        result = await aio_client.infer(MODEL_NAME, [uint8_input(digits)])
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), classify_probabilities, atol=TOLERANCE
    )


def test_stream(
    client: triton.InferenceServerClient, digits: np.ndarray, classify_probabilities: np.ndarray
) -> None:
    replies: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(lambda result, error: replies.put((result, error)))
    try:
        for index in range(STREAM_REQUESTS):
            image = digits[index % DIGITS : index % DIGITS + 1]
            tensor = (
                triton.InferInput(INPUT_NAME, [1, 784], "UINT8")  # a shape we refuse
                if index == BAD_STREAM_INDEX
                else uint8_input(image)
            )
            if index == BAD_STREAM_INDEX:
                tensor.set_data_from_numpy(image.reshape(1, 784))
            client.async_stream_infer(MODEL_NAME, [tensor], request_id=f"s{index}")
        received = [replies.get(timeout=CALLBACK_WAIT_S) for _ in range(STREAM_REQUESTS)]
    finally:
        client.stop_stream()
    for index, (result, error) in enumerate(received):
        if index == BAD_STREAM_INDEX:
            assert result is None
            assert isinstance(error, InferenceServerException)
            assert "INVALID_ARGUMENT" in error.message()
            assert "UINT8 [N,1,28,28]" in error.message()
        else:
            assert error is None
            # In order, with each request's id echoed.
            assert result.get_response().id == f"s{index}"
            np.testing.assert_allclose(
                result.as_numpy("probabilities")[0],
                classify_probabilities[index % DIGITS],
                atol=TOLERANCE,
            )


@pytest.mark.parametrize(
    ("make_call", "status", "fragment"),
    [
        (
            lambda c, d: c.infer("fashion", [uint8_input(d)]),
            "StatusCode.NOT_FOUND",
            "model 'fashion' is not in the repository",
        ),
        (
            lambda c, d: c.infer(MODEL_NAME, [uint8_input(d)], model_version="9"),
            "StatusCode.NOT_FOUND",
            "version '9' of model 'mnist' is not served",
        ),
        (
            lambda c, d: c.infer(
                MODEL_NAME, [uint8_input(d)], outputs=[triton.InferRequestedOutput("scores")]
            ),
            "StatusCode.INVALID_ARGUMENT",
            "unknown output 'scores'",
        ),
        (
            lambda c, d: c.infer(MODEL_NAME, [_int32_input(d)]),
            "StatusCode.INVALID_ARGUMENT",
            "datatype 'INT32' is not accepted",
        ),
        (
            lambda c, d: c.infer(MODEL_NAME, [_fp32_raw_pixels(d)]),
            "StatusCode.INVALID_ARGUMENT",
            "in [0,1]",
        ),
        (
            lambda c, d: c.infer(MODEL_NAME, [uint8_input(d)], timeout=SHORT_TIMEOUT_US),
            "StatusCode.DEADLINE_EXCEEDED",
            "deadline exceeded",
        ),
        (
            lambda c, d: c.get_model_metadata("fashion"),
            "StatusCode.NOT_FOUND",
            "model 'fashion' is not in the repository",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-version",
        "unknown-output",
        "wrong-datatype",
        "fp32-0-255",
        "timeout",
        "metadata-unknown-model",
    ],
)
def test_errors_surface_with_their_status(
    client: triton.InferenceServerClient,
    digits: np.ndarray,
    make_call: Any,
    status: str,
    fragment: str,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        make_call(client, digits[:1])
    assert caught.value.status() == status
    assert fragment in (caught.value.message() or "")


def _int32_input(images: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput(INPUT_NAME, [len(images), 28, 28], "INT32")
    tensor.set_data_from_numpy(images.astype(np.int32))
    return tensor


def _fp32_raw_pixels(images: np.ndarray) -> triton.InferInput:
    """0-255 values sent as FP32 (a common mistake): refused, not silently clipped."""
    tensor = triton.InferInput(INPUT_NAME, [len(images), 28, 28], "FP32")
    tensor.set_data_from_numpy(images.astype(np.float32))
    return tensor


def test_the_documented_example_runs(v2_server: ServerProcess) -> None:
    """docs/v2_protocol.md's "Using Triton and KServe clients" example, as written."""
    text = (REPO_ROOT / "docs" / "v2_protocol.md").read_text()
    section = text.split("## Using Triton and KServe clients", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    code = match.group(1)
    assert "localhost:8001" in code
    namespace: dict[str, Any] = {}
    runnable = code.replace("localhost:8001", v2_server.target)
    exec(compile(runnable, "docs/v2_protocol.md", "exec"), namespace)
    assert namespace["probabilities"].shape == (2, 10)
