"""The core's inference entry points over a real registry (real ONNX Runtime sessions and
batchers): one InferenceRequest, and many in one step (`DataPlane.infer_batch`), each
answered exactly once with its response or its error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from mnist_serving_server.core.dataplane import DataPlane, ModelControlMode
from mnist_serving_server.core.errors import (
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
    QueueFullError,
)
from mnist_serving_server.core.inference import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    RequestLimits,
    requested_output,
)
from mnist_serving_server.core.registry import ModelRegistry, RegistryOptions
from tests.registry_options import RETIRE_TIMEOUT_S
from tests.repository_models import MODEL_FILE, add_version

LIMITS = RequestLimits(max_rows=16, max_decoded_pixels=1 << 20)
QUEUE_IMAGES = 12


@pytest.fixture
async def plane(tmp_path: Path, model_dir: Path) -> AsyncIterator[DataPlane]:
    repository = tmp_path / "repository"
    add_version(model_dir / MODEL_FILE, repository, "mnist", 1)
    registry = ModelRegistry(
        repository,
        RegistryOptions(
            max_batch_size=8,
            max_queue_delay_s=0.0,
            max_queue_size=QUEUE_IMAGES,
            provider="cpu",
            intra_op_threads=1,
            default_model=None,
            retire_timeout_s=RETIRE_TIMEOUT_S,
        ),
    )
    await registry.load_all()
    instance = DataPlane(registry, control_mode=ModelControlMode.NONE)
    instance.set_ready(True)
    yield instance
    await registry.stop()


def images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 1, 28, 28), dtype=np.uint8)


def raw_request(pixels: np.ndarray, request_id: str, model: str = "mnist") -> InferenceRequest:
    tensor = InputTensor("pixels", "UINT8", pixels.shape, raw=pixels.tobytes())
    return InferenceRequest(model, "", tensor, request_id=request_id)


class Answers(dict[int, InferenceResponse | BaseException]):
    """What `infer_batch` answered, by call index; `done` is its callback."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self._expected = expected
        self._all = asyncio.Event()

    def done(self, index: int, result: InferenceResponse | BaseException) -> None:
        assert index not in self, f"call {index} answered twice"
        self[index] = result
        if len(self) == self._expected:
            self._all.set()

    async def settled(self) -> None:
        """Until every call is answered (bounded: the batch loop answers within seconds)."""
        async with asyncio.timeout(10):
            await self._all.wait()


async def test_one_request_answers_in_wire_form_with_its_id_and_version(plane: DataPlane) -> None:
    pixels = images(2, 1)
    request = raw_request(pixels, "a")
    request.outputs = [requested_output("probabilities"), requested_output("probabilities", 3)]
    with pytest.raises(InvalidInputError, match="more than once"):
        await plane.infer_request(request, LIMITS)
    request.outputs = [requested_output("probabilities")]
    response = await plane.infer_request(request, LIMITS)
    assert (response.model, response.version, response.id) == ("mnist", "1", "a")
    assert (request.resolved_model, request.resolved_version) == ("mnist", "1")
    [output] = response.outputs
    assert (output.name, output.datatype, output.shape) == ("probabilities", "FP32", (2, 10))
    probabilities = np.frombuffer(output.wire_bytes(), dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


async def test_a_batch_of_calls_gets_one_answer_each_matching_one_by_one(plane: DataPlane) -> None:
    inputs = [images(1 + i % 3, seed=i) for i in range(6)]
    expected = [
        await plane.infer_request(raw_request(p, f"r{i}"), LIMITS) for i, p in enumerate(inputs)
    ]
    results = Answers(len(inputs))
    plane.infer_batch([raw_request(p, f"r{i}") for i, p in enumerate(inputs)], LIMITS, results.done)
    await results.settled()
    for index, one_by_one in enumerate(expected):
        response = results[index]
        assert isinstance(response, InferenceResponse), response
        assert response.id == f"r{index}"
        assert [o.wire_bytes() for o in response.outputs] == [
            o.wire_bytes() for o in one_by_one.outputs
        ]


async def test_refused_calls_are_answered_at_once_and_the_others_still_run(
    plane: DataPlane,
) -> None:
    good = raw_request(images(1, 1), "good")
    unknown = raw_request(images(1, 2), "unknown", model="absent")
    malformed = InferenceRequest(
        "mnist", "", InputTensor("pixels", "UINT8", (1, 28, 28), values=[True] * 784)
    )
    results = Answers(3)
    plane.infer_batch([good, unknown, malformed], LIMITS, results.done)
    # The refusals arrive before this step ends; the computed call only after its batch.
    assert sorted(results) == [1, 2]
    assert isinstance(results[1], ModelNotFoundError)
    assert isinstance(results[2], InvalidInputError)
    assert "got a bool" in str(results[2])
    await results.settled()
    assert isinstance(results[0], InferenceResponse)


async def test_a_full_queue_refuses_the_calls_that_do_not_fit(plane: DataPlane) -> None:
    # 12 images fit the queue; the batch loop cannot run before this step ends.
    calls = [raw_request(images(4, i), f"q{i}") for i in range(4)]
    results = Answers(len(calls))
    plane.infer_batch(calls, LIMITS, results.done)
    assert sorted(results) == [3]
    assert isinstance(results[3], QueueFullError)
    await results.settled()
    assert all(isinstance(results[i], InferenceResponse) for i in range(3))
    statistics = plane.registry.resolve("mnist", "").statistics
    assert (statistics.success.count, statistics.fail.count) == (3, 1)


async def test_a_full_queue_refuses_before_decoding_the_input(plane: DataPlane) -> None:
    filling = [raw_request(images(4, i), f"q{i}") for i in range(3)]
    # Malformed (3 bytes for 4 images): decoding it would answer INVALID_ARGUMENT; a full
    # queue refuses it first, so that shedding load costs no decode.
    malformed = InferenceRequest(
        "mnist", "", InputTensor("pixels", "UINT8", (4, 1, 28, 28), raw=b"\x00" * 3)
    )
    results = Answers(4)
    plane.infer_batch([*filling, malformed], LIMITS, results.done)
    assert isinstance(results[3], QueueFullError)
    await results.settled()


async def test_not_ready_refuses_every_call(plane: DataPlane) -> None:
    plane.set_ready(False)
    results = Answers(2)
    plane.infer_batch([raw_request(images(1, i), str(i)) for i in range(2)], LIMITS, results.done)
    assert sorted(results) == [0, 1]
    assert all(isinstance(r, NotReadyError) for r in results.values())
