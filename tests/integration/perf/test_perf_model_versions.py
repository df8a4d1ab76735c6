"""Versions side by side (a config.pbtxt version policy), and the INT8 model as version 2.

The INT8 model is made here the way `--quantize int8` makes it (training's quantize_int8:
static QDQ, conv1 and the first pool kept FP32, QDQPropagationTransformer disabled through
the model's metadata), so the runtime is checked against the real artifact.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import classifier_pb2_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.ort_names import DISABLED_OPTIMIZERS_KEY
from mnist_serving_training.quantize import QuantizationSettings, quantize_int8
from tests.integration.conftest import app_config
from tests.integration.server.classify_support import ReferenceModel, raw_request

FP32_VERSION = 1
INT8_VERSION = 2
CALIBRATION_IMAGES = 200
# Training measured 99.9% agreement between INT8 and FP32 labels on these digits.
MIN_LABEL_AGREEMENT = 0.98
IMAGES_PER_REQUEST = 100
RPC_TIMEOUT_S = 60
StartVersionsApp = Callable[..., Awaitable[ServingApp]]


@pytest.fixture(scope="module")
def two_version_repository(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path, sample_digits: tuple[Any, Any]
) -> Path:
    """`mnist/1` = the session's FP32 model, `mnist/2` = its INT8 quantization."""
    repository = tmp_path_factory.mktemp("versions")
    fp32_dir = repository / "mnist" / str(FP32_VERSION)
    int8_dir = repository / "mnist" / str(INT8_VERSION)
    fp32_dir.mkdir(parents=True)
    int8_dir.mkdir()
    shutil.copy(model_dir / "model.onnx", fp32_dir / "model.onnx")
    images, _ = sample_digits
    quantize_int8(
        fp32_dir / "model.onnx",
        int8_dir / "model.onnx",
        images,
        QuantizationSettings(calibration_images=CALIBRATION_IMAGES),
    )
    return repository


@pytest.fixture
async def start_versions_app(
    two_version_repository: Path,
) -> AsyncIterator[Callable[..., Awaitable[ServingApp]]]:
    """Start servers on the two-version repository; each is stopped when the test ends."""
    apps: list[ServingApp] = []

    async def start(**overrides: Any) -> ServingApp:
        repository = overrides.pop("model_repository", two_version_repository)
        app = ServingApp(app_config(repository, **overrides))
        # Kept before starting: a failed warm-up raises from start() with the server up.
        apps.append(app)
        await app.start()
        return app

    yield start
    for app in reversed(apps):
        await app.stop(drain_delay_s=0)


async def served_labels(
    target: str, digits: np.ndarray, version: str = ""
) -> tuple[list[int], set[str]]:
    labels: list[int] = []
    versions: set[str] = set()
    async with aio.insecure_channel(target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        for start in range(0, len(digits), IMAGES_PER_REQUEST):
            request = raw_request(digits[start : start + IMAGES_PER_REQUEST])
            request.model_version = version
            reply = await stub.Classify(request, timeout=RPC_TIMEOUT_S)
            labels.extend(prediction.label for prediction in reply.predictions)
            versions.add(reply.model_version)
    return labels, versions


async def test_the_highest_version_is_served_by_default_and_int8_agrees_with_fp32(
    start_versions_app: StartVersionsApp,
    two_version_repository: Path,
    sample_digits: tuple[Any, Any],
) -> None:
    app = await start_versions_app()
    info = app.dataplane.model("", "").info
    assert info.version == str(INT8_VERSION)
    assert "QDQPropagationTransformer" in info.metadata[DISABLED_OPTIMIZERS_KEY]
    images, _ = sample_digits
    labels, versions = await served_labels(app.target, images)
    assert versions == {str(INT8_VERSION)}
    fp32 = ReferenceModel(two_version_repository / "mnist" / str(FP32_VERSION))
    expected = fp32.probabilities(images).argmax(axis=1)
    agreement = float(np.mean(np.array(labels) == expected))
    assert agreement >= MIN_LABEL_AGREEMENT, agreement


def with_policy(repository: Path, tmp_path: Path, policy: str) -> Path:
    """A copy of `repository` whose mnist/config.pbtxt sets `version_policy: { policy }`."""
    copy = tmp_path / "repository"
    shutil.copytree(repository, copy)
    (copy / "mnist" / "config.pbtxt").write_text(f"version_policy: {{ {policy} }}\n")
    return copy


async def test_a_version_policy_serves_both_and_a_request_picks_the_older(
    start_versions_app: StartVersionsApp,
    two_version_repository: Path,
    tmp_path: Path,
    sample_digits: tuple[Any, Any],
) -> None:
    repository = with_policy(two_version_repository, tmp_path, "all: {}")
    app = await start_versions_app(model_repository=repository)
    assert app.dataplane.model("", "").info.version == str(INT8_VERSION)  # latest by default
    assert app.dataplane.model("mnist", str(FP32_VERSION)).info.version == str(FP32_VERSION)
    images, _ = sample_digits
    digits = images[:IMAGES_PER_REQUEST]
    labels, versions = await served_labels(app.target, digits, version=str(FP32_VERSION))
    assert versions == {str(FP32_VERSION)}
    fp32 = ReferenceModel(two_version_repository / "mnist" / str(FP32_VERSION))
    assert labels == fp32.probabilities(digits).argmax(axis=1).tolist()


async def test_a_policy_naming_a_missing_version_fails_the_start_naming_the_policy(
    start_versions_app: StartVersionsApp, two_version_repository: Path, tmp_path: Path
) -> None:
    repository = with_policy(two_version_repository, tmp_path, "specific: { versions: [7] }")
    with pytest.raises(ModelLoadError, match=r"no version of 'mnist' to serve.*specific \[7\]"):
        await start_versions_app(model_repository=repository)


async def test_a_failed_warm_up_leaves_nothing_running(
    two_version_repository: Path, tmp_path: Path
) -> None:
    repository = with_policy(two_version_repository, tmp_path, "specific: { versions: [7] }")
    app = ServingApp(app_config(repository))  # no fixture: start() must clean up by itself
    with pytest.raises(ModelLoadError):
        await app.start()
    assert app.metrics_port is None
    assert app.http_port is None
    await app.stop()  # idempotent: already stopped
