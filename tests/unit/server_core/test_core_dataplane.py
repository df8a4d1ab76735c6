"""DataPlane over a real ModelRegistry (real ONNX Runtime sessions and batchers): readiness,
per-version statistics, the model control modes and the Classify API's model check."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from mnist_serving_server.core.dataplane import DataPlane, ModelControlMode
from mnist_serving_server.core.errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidInputError,
    ModelNotFoundError,
    NotReadyError,
)
from mnist_serving_server.core.registry import ModelRegistry
from tests.registry_options import small_registry_options
from tests.repository_models import (
    MODEL_FILE,
    add_version,
    write_regressor,
)

REGRESSOR = "regressor"


@pytest.fixture
async def registry(tmp_path: Path, model_dir: Path) -> AsyncIterator[ModelRegistry]:
    """mnist (the session's classifier) and a regressor, both loaded."""
    repository = tmp_path / "repository"
    add_version(model_dir / MODEL_FILE, repository, "mnist", 1)
    write_regressor(repository)
    instance = ModelRegistry(
        repository,
        small_registry_options(max_batch_size=8),
    )
    await instance.load_all()
    yield instance
    await instance.stop()


def is_ready(plane: DataPlane) -> bool:
    """`plane.ready`, read through a call (it changes under the test's feet)."""
    return plane.ready


def accepting(plane: DataPlane) -> bool:
    return plane.accepting


def features(rows: int) -> np.ndarray:
    return np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)


async def test_nothing_is_ready_or_computed_before_set_ready(registry: ModelRegistry) -> None:
    plane = DataPlane(registry, control_mode=ModelControlMode.EXPLICIT)
    assert registry.any_ready
    assert not is_ready(plane)
    assert not accepting(plane)
    assert not plane.model_ready(REGRESSOR, "")
    with pytest.raises(NotReadyError, match="not ready"):
        plane.model(REGRESSOR, "")  # not NOT_FOUND: the model is there, just not yet ready
    served = registry.resolve(REGRESSOR, "")
    with pytest.raises(NotReadyError, match="not ready"):
        await plane.infer(served, features(1), deadline=None)
    assert served.statistics.success.count == 0
    assert served.statistics.fail.count == 0

    plane.set_ready(True)
    assert is_ready(plane)
    assert plane.accepting
    assert plane.model_ready(REGRESSOR, "")
    assert plane.model_ready(REGRESSOR, "1")
    assert not plane.model_ready(REGRESSOR, "2")
    assert not plane.model_ready("absent", "")
    outputs = await plane.infer(served, features(2), deadline=None)
    np.testing.assert_array_equal(outputs["doubled"], features(2) * 2)

    plane.set_ready(False)  # shutting down
    assert not is_ready(plane)
    with pytest.raises(NotReadyError):
        await plane.infer(served, features(1), deadline=None)


async def test_not_ready_when_no_model_is_served(registry: ModelRegistry) -> None:
    plane = DataPlane(registry, control_mode=ModelControlMode.EXPLICIT)
    plane.set_ready(True)
    await plane.unload(REGRESSOR)
    assert plane.ready
    await plane.unload("mnist")
    assert plane.accepting
    assert not is_ready(plane)
    assert not plane.model_ready("mnist", "")
    with pytest.raises(ModelNotFoundError, match="'mnist' is not loaded"):
        plane.model("", "")
    await plane.load("mnist")
    assert is_ready(plane)
    assert plane.model("", "").name == "mnist"


async def test_statistics_count_successes_failures_and_images(registry: ModelRegistry) -> None:
    plane = DataPlane(registry, control_mode=ModelControlMode.EXPLICIT)
    plane.set_ready(True)
    served = plane.model(REGRESSOR, "")
    rows = [1, 3, 2]
    wall_before_ms = time.time_ns() // 1_000_000
    before_ns = time.perf_counter_ns()
    for count in rows:
        await plane.infer(served, features(count), deadline=None)
    elapsed_ns = time.perf_counter_ns() - before_ns
    wall_after_ms = time.time_ns() // 1_000_000
    with pytest.raises(DeadlineExceededError):
        await plane.infer(served, features(1), deadline=time.monotonic() - 1)
    with pytest.raises(InvalidInputError):
        await plane.infer(served, np.zeros((0, 4), dtype=np.float32), deadline=None)

    stats = served.statistics
    assert stats.success.count == len(rows)
    # Each answered call's time holds its queue wait and its batch's compute, and lies
    # within the loop that made the calls.
    assert stats.queue.ns + stats.compute_infer.ns <= stats.success.ns <= elapsed_ns
    assert stats.fail.count == 2
    assert stats.inference_count == sum(rows)
    # One call at a time: each was a batch of its own.
    assert stats.execution_count == len(rows)
    assert stats.queue.count == len(rows)
    assert stats.compute_infer.count == len(rows)
    assert {size: b.count for size, b in stats.batches.items()} == {1: 1, 3: 1, 2: 1}
    assert wall_before_ms <= stats.last_inference_ms <= wall_after_ms
    # What the statistics API answers is that record, in Triton's shape.
    (record,) = await plane.statistics(REGRESSOR, "")
    assert record["inference_count"] == sum(rows)
    assert record["inference_stats"]["success"] == {"count": len(rows), "ns": stats.success.ns}
    assert record["inference_stats"]["fail"]["count"] == 2
    # Another model's statistics are its own.
    (mnist,) = await plane.statistics("mnist", "")
    assert (mnist["inference_stats"]["success"]["count"], mnist["inference_count"]) == (0, 0)
    assert [r["name"] for r in await plane.statistics("", "")] == ["mnist", REGRESSOR]
    assert plane.versions(REGRESSOR) == ["1"]
    with pytest.raises(ModelNotFoundError):
        await plane.statistics(REGRESSOR, "9")


@pytest.mark.parametrize("mode", [ModelControlMode.NONE, ModelControlMode.POLL])
async def test_repository_changes_are_refused_unless_explicit(
    registry: ModelRegistry, mode: ModelControlMode
) -> None:
    plane = DataPlane(registry, control_mode=mode)
    plane.set_ready(True)
    served = plane.model(REGRESSOR, "")
    for change in (plane.unload, plane.load):
        with pytest.raises(FailedPreconditionError) as raised:
            await change(REGRESSOR)
        assert f"--model-control-mode {mode.value}" in str(raised.value)
        assert "--model-control-mode explicit" in str(raised.value)
    assert plane.model(REGRESSOR, "") is served
    assert served.ready
    assert [e.name for e in await plane.index(ready_only=True)] == ["mnist", REGRESSOR]


async def test_explicit_mode_loads_and_unloads(registry: ModelRegistry) -> None:
    plane = DataPlane(registry, control_mode=ModelControlMode.EXPLICIT)
    plane.set_ready(True)
    await plane.unload(REGRESSOR)
    with pytest.raises(ModelNotFoundError):
        plane.model(REGRESSOR, "")
    await plane.load(REGRESSOR)
    config, served = plane.model_config(REGRESSOR)
    assert config.name == REGRESSOR
    assert config.max_batch_size == 8
    assert served.version == "1"


async def test_classifier_gives_the_image_contract_and_refuses_the_regressor(
    registry: ModelRegistry,
) -> None:
    plane = DataPlane(registry, control_mode=ModelControlMode.EXPLICIT)
    plane.set_ready(True)
    served, contract = plane.classifier("mnist", "")
    assert served.name == "mnist"
    assert contract.image_shape == served.info.inputs[0].shape[1:]
    assert (
        contract.num_classes
        == dict((o.name, o.shape) for o in served.info.outputs)["probabilities"][1]
    )
    with pytest.raises(FailedPreconditionError) as raised:
        plane.classifier(REGRESSOR, "")
    message = str(raised.value)
    assert "'regressor' is not an image classifier" in message
    assert "FP32 [-1, 4]" in message
    assert "ModelInfer" in message
    with pytest.raises(ModelNotFoundError):
        plane.classifier("absent", "")
