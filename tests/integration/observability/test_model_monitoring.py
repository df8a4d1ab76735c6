"""A real server watching its model: predictions, confidence and drift against the
reference profile, and a shadow version compared on live traffic (issue 28)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mnist_serving_client import AsyncClient
from mnist_serving_server.app import ServingApp
from mnist_serving_server.core.errors import FailedPreconditionError
from mnist_serving_server.core.monitoring import PROFILE_FILE_NAME, SIGNALS
from mnist_serving_server.core.registry import ModelState
from mnist_serving_server.core.runtime import ModelRuntime
from mnist_serving_server.core.shadow import FLUSH_DELAY_S
from mnist_serving_server.core.triton_records import model_config_record
from mnist_serving_training.data import FASHION_MNIST_DIR, load_fashion_mnist, load_mnist_sample
from mnist_serving_training.reference_profile import profile_model, write_version_profile
from tests.integration.conftest import StartApp
from tests.repository_models import add_version, reference_probabilities, write_regressor
from tests.support.metrics import sample_sum

MODEL = "mnist"
IMAGES = 1_200
WINDOW = 1_000  # the default --drift-window
REQUEST_IMAGES = 8
CALLERS = 6
SETTLE_TIMEOUT_S = 30.0
STABLE_PSI = 0.1
SHIFTED_PSI = 0.25
PROBABILITIES = "probabilities"
MIN_COMPARED = 0.5
SLOW_SHADOW_S = 0.2


def shadow_config(shadow: str, versions: Sequence[int]) -> str:
    listed = ", ".join(map(str, versions))
    return (
        f'name: "{MODEL}"\n'
        f"version_policy {{ specific {{ versions: [{listed}] }} }}\n"
        f'parameters {{ key: "shadow_version" value: {{ string_value: "{shadow}" }} }}\n'
    )


def write_permuted(source: Path, target: Path) -> None:
    """`source` with its classes rotated by one: class k's probability is reported as k+1."""
    model = onnx.load(str(source))
    graph = model.graph
    (producer,) = [node for node in graph.node if PROBABILITIES in node.output]
    producer.output[list(producer.output).index(PROBABILITIES)] = "probabilities_unpermuted"
    order = np.roll(np.arange(10), 1).astype(np.int64)
    graph.initializer.append(helper.make_tensor("permutation", TensorProto.INT64, [10], order))
    gather = helper.make_node(
        "Gather", ["probabilities_unpermuted", "permutation"], [PROBABILITIES], axis=1
    )
    graph.node.insert(list(graph.node).index(producer) + 1, gather)
    onnx.checker.check_model(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))


@pytest.fixture(scope="module")
def reference_model(model_repository: Path) -> Path:
    return model_repository / MODEL / "1" / "model.onnx"


@pytest.fixture(scope="module")
def profiled_repository(tmp_path_factory: pytest.TempPathFactory, reference_model: Path) -> Path:
    """mnist/1 (the session's model) with its reference profile, computed by the command's
    own function on the mnist-sample held-out digits."""
    repository = tmp_path_factory.mktemp("monitored")
    add_version(reference_model, repository, MODEL, 1)
    write_version_profile(
        repository / MODEL / "1", profile_model(reference_model, load_mnist_sample())
    )
    return repository


async def classify_all(app: ServingApp, images: np.ndarray) -> np.ndarray:
    """Every image classified in requests of REQUEST_IMAGES by CALLERS concurrent callers;
    the probabilities in order, once the monitors have seen them (FLUSH_DELAY_S)."""
    chunks = [
        images[start : start + REQUEST_IMAGES] for start in range(0, len(images), REQUEST_IMAGES)
    ]
    results: list[np.ndarray] = [np.empty(0)] * len(chunks)
    async with AsyncClient(app.target, timeout_s=60) as client:

        async def caller(offset: int) -> None:
            for index in range(offset, len(chunks), CALLERS):
                predictions = await client.classify(chunks[index])
                results[index] = np.stack([p.probabilities for p in predictions])

        await asyncio.gather(*(caller(offset) for offset in range(CALLERS)))
    await asyncio.sleep(3 * FLUSH_DELAY_S)
    return np.concatenate(results)


def psi(app: ServingApp, version: str = "1") -> dict[str, float]:
    found = {
        sample.labels["signal"]: sample.value
        for family in app.registry.collect()
        for sample in family.samples
        if sample.name == "mnist_serving_drift_psi"
        and sample.labels["model"] == MODEL
        and sample.labels["version"] == version
    }
    return {signal: found.get(signal, math.nan) for signal in SIGNALS}


def metric(app: ServingApp, name: str, **labels: str) -> float:
    return sample_sum(app.registry, name, labels)


async def wait_for_shadow(app: ServingApp, images: float) -> dict[str, float]:
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        outcomes = {
            outcome: metric(app, "mnist_serving_shadow_images_total", model=MODEL, outcome=outcome)
            for outcome in ("agree", "disagree", "dropped")
        }
        if sum(outcomes.values()) >= images or time.monotonic() > deadline:
            return outcomes
        await asyncio.sleep(0.05)


async def test_held_out_digits_show_no_drift_and_clothes_do(
    start_app: StartApp, profiled_repository: Path
) -> None:
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR}: make system-deps)")
    app = await start_app(model_repository=profiled_repository)
    digits = load_mnist_sample().test_images
    order = np.random.default_rng(0).permutation(len(digits))
    sent = np.concatenate([digits[order], digits[order[: IMAGES - len(digits)]]])
    assert all(math.isnan(value) for value in psi(app).values())  # absent before any image
    await classify_all(app, sent)
    stable = psi(app)
    assert all(value < STABLE_PSI for value in stable.values()), stable
    assert metric(app, "mnist_serving_predictions_total", model=MODEL) == IMAGES
    assert metric(app, "mnist_serving_prediction_confidence_count", model=MODEL) == IMAGES

    # Other real digits (the sample's training images, a random 1,000): no drift either.
    training = load_mnist_sample().train_images
    others = training[np.random.default_rng(1).permutation(len(training))[:WINDOW]]
    await classify_all(app, others)
    other_digits = psi(app)
    assert all(value < STABLE_PSI for value in other_digits.values()), other_digits

    clothes = load_fashion_mnist().test_images[:IMAGES]
    await classify_all(app, clothes)
    shifted = psi(app)
    assert shifted["label"] > SHIFTED_PSI, shifted
    assert shifted["input"] > SHIFTED_PSI, shifted
    sent_in_all = 2 * IMAGES + WINDOW
    assert metric(app, "mnist_serving_predictions_total", model=MODEL) == sent_in_all
    assert metric(app, "mnist_serving_prediction_confidence_count", model=MODEL) == sent_in_all
    by_label = [
        metric(app, "mnist_serving_predictions_total", model=MODEL, label=str(digit))
        for digit in range(10)
    ]
    assert sum(by_label) == sent_in_all


async def test_a_shadow_copy_agrees_a_permuted_one_does_not_and_callers_never_see_it(
    start_app: StartApp, tmp_path: Path, reference_model: Path
) -> None:
    add_version(reference_model, tmp_path, MODEL, 1)
    add_version(reference_model, tmp_path, MODEL, 2)  # logits / 4: same top-1, other answers
    write_permuted(reference_model, tmp_path / MODEL / "3" / "model.onnx")
    (tmp_path / MODEL / "config.pbtxt").write_text(shadow_config("2", [1, 2]))
    app = await start_app(model_repository=tmp_path)
    digits = load_mnist_sample().test_images
    expected = reference_probabilities(reference_model, digits)

    answers = await classify_all(app, digits)  # no version named: version 1, never the shadow
    np.testing.assert_allclose(answers, expected, atol=1e-4)
    outcomes = await wait_for_shadow(app, len(digits))
    # Copies may be dropped (the shadow's queue is bounded, the machine shared); of those
    # compared, a copy of the serving version agrees on (nearly) every image.
    compared = outcomes["agree"] + outcomes["disagree"]
    assert compared >= MIN_COMPARED * len(digits), outcomes
    assert outcomes["agree"] >= 0.99 * compared, outcomes
    assert metric(app, "mnist_serving_predictions_total", model=MODEL, version="2") == len(digits)
    index = {(entry.version, entry.state): entry.reason for entry in app.models.index()}
    assert index[("2", ModelState.READY)] == "shadow of version 1"
    served = app.models.resolve(MODEL, "")
    assert served.version == "1"
    record = model_config_record(app.models.model_config(MODEL), served.info)
    assert record["parameters"]["shadow_version"] == {"string_value": "2"}

    # A changed config applies at the next repository load: now the permuted version.
    (tmp_path / MODEL / "config.pbtxt").write_text(shadow_config("3", [1, 3]))
    await app.models.load(MODEL)
    answers = await classify_all(app, digits)
    np.testing.assert_allclose(answers, expected, atol=1e-4)
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        permuted = {
            outcome: metric(
                app, "mnist_serving_shadow_images_total", shadow_version="3", outcome=outcome
            )
            for outcome in ("agree", "disagree", "dropped")
        }
        if sum(permuted.values()) >= len(digits):
            break
        await asyncio.sleep(0.05)
    compared = permuted["agree"] + permuted["disagree"]
    assert compared >= MIN_COMPARED * len(digits), permuted
    assert permuted["agree"] <= 0.05 * compared, permuted


async def test_a_saturated_shadow_drops_copies_and_the_primary_serves_without_errors(
    start_app: StartApp, tmp_path: Path, reference_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_version(reference_model, tmp_path, MODEL, 1)
    add_version(reference_model, tmp_path, MODEL, 2)
    (tmp_path / MODEL / "config.pbtxt").write_text(shadow_config("2", [1, 2]))
    real_run = ModelRuntime.run

    def slow_shadow(self: ModelRuntime, pixels: np.ndarray) -> dict[str, np.ndarray]:
        if self.info.version == "2":
            time.sleep(SLOW_SHADOW_S)  # a shadow far slower than its primary
        return real_run(self, pixels)

    monkeypatch.setattr(ModelRuntime, "run", slow_shadow)  # the batchers bind it at load
    app = await start_app(model_repository=tmp_path)
    digits = load_mnist_sample().test_images
    answers = await classify_all(app, np.concatenate([digits, digits]))
    assert len(answers) == 2 * len(digits)
    assert metric(app, "mnist_serving_requests_total", method="Classify", code="OK") == (
        2 * len(digits) / REQUEST_IMAGES
    )
    outcomes = await wait_for_shadow(app, 2 * len(digits))
    assert outcomes["dropped"] > 0, outcomes
    assert sum(outcomes.values()) == 2 * len(digits)
    assert metric(app, "mnist_serving_rejections_total", reason="queue_full") == 0


async def test_bad_shadow_versions_fail_the_load_and_the_served_versions_keep_serving(
    start_app: StartApp, tmp_path: Path, reference_model: Path
) -> None:
    add_version(reference_model, tmp_path, MODEL, 1)
    add_version(reference_model, tmp_path, MODEL, 2)
    write_regressor(tmp_path)
    app = await start_app(model_repository=tmp_path)
    config = tmp_path / MODEL / "config.pbtxt"
    for text, reason in (
        (shadow_config("7", [1, 2]), "not a version the policy"),
        (shadow_config("2", [2]), "would leave no serving version"),
    ):
        config.write_text(text)
        with pytest.raises(FailedPreconditionError, match=reason):
            await app.models.load(MODEL)
        rows = [entry for entry in app.models.index() if entry.name == MODEL]
        assert any(entry.version == "" and reason in entry.reason for entry in rows), rows
        assert app.models.resolve(MODEL, "").version == "2"
        await classify_all(app, load_mnist_sample().test_images[:16])
    # The regressor (not a classifier) has no prediction metrics and caused no error.
    assert metric(app, "mnist_serving_predictions_total", model="regressor") == 0
    assert metric(app, "mnist_serving_prediction_confidence_count", model="regressor") == 0
    assert json.dumps([e.reason for e in app.models.index() if e.name == "regressor"]) == '[""]'


def test_the_profile_command_writes_the_profile_and_the_report_key(
    tmp_path: Path, reference_model: Path
) -> None:
    from mnist_serving_training.reference_profile import REPORT_KEY, main

    version = tmp_path / MODEL / "1"
    add_version(reference_model, tmp_path, MODEL, 1)
    (version / "training_report.json").write_text('{"test_accuracy": 1.0}\n')
    assert main(["--model", str(version / "model.onnx"), "--dataset", "mnist-sample"]) == 0
    profile: dict[str, Any] = json.loads((version / PROFILE_FILE_NAME).read_text())
    report: dict[str, Any] = json.loads((version / "training_report.json").read_text())
    assert report[REPORT_KEY] == profile
    assert profile["images"] == 1_000
    assert profile["signals"]["input"]["statistic"] == "mean_intensity"
