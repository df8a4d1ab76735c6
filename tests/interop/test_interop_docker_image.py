"""NVIDIA's tritonclient[grpc] from the host against the image from `make test-docker`.

In the interop pytest process, as tritonclient's protobuf messages require (conftest.py);
skipped unless MNIST_SERVING_DOCKER_IMAGE names the image (`make test-docker` sets it).
The container runs as the Deployment runs it (tests/e2e/docker/container.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton

from tests.e2e.docker.container import MODEL_NAME, Container, docker_image, run_container

INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
IMAGES_PER_CALL = 250


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    with run_container(docker_image()) as running:
        yield running


def test_tritonclient_classifies_the_sample_digits(
    container: Container, sample_digits: tuple[Any, Any]
) -> None:
    images = np.ascontiguousarray(sample_digits[0], dtype=np.uint8)
    labels = np.asarray(sample_digits[1])
    predicted: list[int] = []
    with triton.InferenceServerClient(container.grpc_target) as client:
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL_NAME)
        for start in range(0, len(images), IMAGES_PER_CALL):
            chunk = images[start : start + IMAGES_PER_CALL]
            tensor = triton.InferInput(INPUT_NAME, [len(chunk), 1, 28, 28], "UINT8")
            tensor.set_data_from_numpy(chunk.reshape(len(chunk), 1, 28, 28))
            result = client.infer(
                MODEL_NAME,
                [tensor],
                outputs=[triton.InferRequestedOutput(OUTPUT_NAME)],
                client_timeout=60,
            )
            probabilities = result.as_numpy(OUTPUT_NAME)
            assert probabilities is not None
            predicted.extend(int(label) for label in probabilities.argmax(axis=1))
    accuracy = float(np.mean(np.asarray(predicted) == labels))
    target = container.accuracy_target()
    print(f"tritonclient accuracy on {len(labels)} held-out digits: {accuracy:.2%} ({target:.0%})")
    assert accuracy >= target
