"""InferenceService: the real runtime behind a real batcher, as both servicers use it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_serving_server.core.batcher import DynamicBatcher
from mnist_serving_server.core.dataplane import InferenceService
from mnist_serving_server.core.errors import ModelNotFoundError, NotReadyError
from mnist_serving_server.core.runtime import ModelRuntime

MAX_BATCH_SIZE = 16
# Batched and single-image runs of the same digit agree to float32 rounding.
PARITY_TOLERANCE = 1e-6
CONCURRENT_CALLERS = 200


@pytest.fixture(scope="module")
def runtime(model_dir: Path) -> ModelRuntime:
    loaded = ModelRuntime.load(model_dir / "model.onnx", name="mnist", version="1")
    loaded.warm_up(MAX_BATCH_SIZE)
    return loaded


@pytest.fixture
async def service(runtime: ModelRuntime) -> AsyncIterator[InferenceService]:
    batcher = DynamicBatcher(runtime.run, max_batch_size=MAX_BATCH_SIZE)
    await batcher.start()
    yield InferenceService(runtime, batcher)
    await batcher.stop()


def is_ready(service: InferenceService) -> bool:
    """Read afresh (a plain `service.ready` would be narrowed by mypy across set_ready)."""
    return service.ready


def test_check_model_accepts_the_served_model_and_defaults(service: InferenceService) -> None:
    for name, version in (("mnist", "1"), ("mnist", ""), ("", ""), ("", "1")):
        service.check_model(name, version)


def test_check_model_names_what_is_available(service: InferenceService) -> None:
    with pytest.raises(ModelNotFoundError) as raised:
        service.check_model("x", "")
    assert str(raised.value) == "model 'x' is not served; available: mnist (versions 1)"
    with pytest.raises(ModelNotFoundError, match=r"version '7'.*available: mnist \(versions 1\)"):
        service.check_model("mnist", "7")


async def test_not_ready_until_set_ready(service: InferenceService) -> None:
    assert not service.ready
    with pytest.raises(NotReadyError, match="not ready"):
        await service.infer(np.zeros((1, 1, 28, 28), np.uint8), deadline=None)
    service.set_ready(True)
    assert is_ready(service)
    outputs = await service.infer(np.zeros((1, 1, 28, 28), np.uint8), deadline=None)
    assert outputs["probabilities"].shape == (1, 10)
    service.set_ready(False)
    assert not is_ready(service)


async def test_not_ready_once_the_batcher_stopped(service: InferenceService) -> None:
    service.set_ready(True)
    await service.batcher.stop()
    assert not is_ready(service)
    with pytest.raises(NotReadyError):
        await service.infer(np.zeros((1, 1, 28, 28), np.uint8), deadline=None)


async def test_concurrent_callers_get_their_own_digits_answer(
    service: InferenceService, runtime: ModelRuntime, sample_digits: tuple[Any, Any]
) -> None:
    digits, labels = sample_digits
    pixels = np.ascontiguousarray(digits[:CONCURRENT_CALLERS, np.newaxis], dtype=np.uint8)
    expected = runtime.run(pixels)["probabilities"]
    service.set_ready(True)
    results = await asyncio.gather(
        *(service.infer(pixels[i : i + 1], deadline=None) for i in range(CONCURRENT_CALLERS))
    )
    served = np.concatenate([result["probabilities"] for result in results])
    np.testing.assert_allclose(served, expected, atol=PARITY_TOLERANCE)
    accuracy = (served.argmax(axis=1) == labels[:CONCURRENT_CALLERS]).mean()
    assert accuracy == (expected.argmax(axis=1) == labels[:CONCURRENT_CALLERS]).mean()
