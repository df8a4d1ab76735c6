"""Per-batch model monitoring (core/monitoring.py) and the shadow link (core/shadow.py),
against a recording observer and a real DynamicBatcher."""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from mnist_serving_server.core.batcher import DynamicBatcher
from mnist_serving_server.core.model_config import read_model_config
from mnist_serving_server.core.monitoring import (
    CONFIDENCE_BUCKETS,
    PROFILE_FILE_NAME,
    SIGNALS,
    ProfileError,
    ReferenceProfile,
    VersionMonitor,
    build_profile,
    input_statistic,
    monitor_for,
    parse_profile,
    write_profile,
)
from mnist_serving_server.core.runtime import ModelInfo, TensorSpec
from mnist_serving_server.core.shadow import (
    AGREE,
    DISAGREE,
    DROPPED,
    FLUSH_DELAY_S,
    BatchTap,
    ShadowLink,
)

CLASSES = 10
LABELS = tuple(str(digit) for digit in range(CLASSES))
WINDOW = 200
POLL_S = 0.01


class Recorder:
    """A MonitoringObserver that keeps every report."""

    def __init__(self) -> None:
        self.labels = np.zeros(CLASSES, dtype=np.int64)
        self.buckets = np.zeros(len(CONFIDENCE_BUCKETS) + 1, dtype=np.int64)
        self.confidence_sum = 0.0
        self.psi: list[dict[str, float]] = []
        self.shadow: dict[str, int] = {AGREE: 0, DISAGREE: 0, DROPPED: 0}

    def on_predictions(
        self, label_counts: np.ndarray, confidence_buckets: np.ndarray, confidence_sum: float
    ) -> None:
        self.labels += label_counts
        self.buckets += confidence_buckets
        self.confidence_sum += confidence_sum

    def on_drift(self, psi: Mapping[str, float]) -> None:
        self.psi.append(dict(psi))

    def on_shadow(self, shadow_version: str, outcome: str, images: int) -> None:
        self.shadow[outcome] += images


def fake_answers(rng: np.random.Generator, rows: int, *, ink: int) -> tuple[np.ndarray, np.ndarray]:
    """Images of about `ink` mean brightness and confident softmax answers for them."""
    pixels = np.clip(rng.normal(ink, 30, size=(rows, 1, 28, 28)), 0, 255).astype(np.uint8)
    logits = rng.normal(0, 1, size=(rows, CLASSES)) + 8 * np.eye(CLASSES)[rng.integers(0, 10, rows)]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return pixels, probabilities.astype(np.float32)


def profile_of(answers: tuple[np.ndarray, np.ndarray]) -> ReferenceProfile:
    pixels, probabilities = answers
    return build_profile(probabilities, pixels, LABELS)


def classifier_info(labels: tuple[str, ...] = LABELS, classes: int = CLASSES) -> ModelInfo:
    return ModelInfo(
        name="mnist",
        version="1",
        path=Path("model.onnx"),
        sha256="0",
        provider="CPUExecutionProvider",
        intra_op_threads=1,
        inputs=(TensorSpec("pixels", "UINT8", np.dtype(np.uint8), (-1, 1, 28, 28)),),
        outputs=(TensorSpec("probabilities", "FP32", np.dtype(np.float32), (-1, classes)),),
        labels=labels,
        metadata={},
    )


def test_input_statistic_is_the_mean_intensity_of_each_image() -> None:
    pixels = np.zeros((2, 1, 28, 28), dtype=np.uint8)
    pixels[1] = 255
    pixels[0, 0, :14] = 255
    assert input_statistic(pixels).tolist() == pytest.approx([0.5, 1.0])


def test_the_same_population_has_a_small_psi_and_a_shifted_one_a_large_psi() -> None:
    rng = np.random.default_rng(0)
    reference = profile_of(fake_answers(rng, 5_000, ink=40))
    recorder = Recorder()
    monitor = VersionMonitor(CLASSES, recorder, reference, WINDOW)
    for _ in range(10):  # 10 batches of 20: the window fills at the last one
        pixels, probabilities = fake_answers(rng, 20, ink=40)
        monitor.observe(pixels, probabilities)
    assert len(recorder.psi) == 1
    assert all(recorder.psi[-1][signal] < 0.1 for signal in SIGNALS), recorder.psi
    pixels, probabilities = fake_answers(rng, WINDOW, ink=120)
    probabilities = np.full_like(probabilities, 1 / CLASSES)  # unsure, and all "0"
    monitor.observe(pixels, probabilities)
    assert recorder.psi[-1]["input"] > 0.25
    assert recorder.psi[-1]["confidence"] > 0.25
    assert recorder.psi[-1]["label"] > 0.25
    assert recorder.labels.sum() == 2 * WINDOW
    assert recorder.buckets.sum() == 2 * WINDOW
    # float32(1/10) is a little above 0.1: bucket le="0.2", as Histogram.observe would say.
    assert recorder.buckets[CONFIDENCE_BUCKETS.index(0.2)] == WINDOW


def test_psi_is_nan_until_the_window_is_full_and_counts_only_the_last_window() -> None:
    rng = np.random.default_rng(1)
    reference = profile_of(fake_answers(rng, 2_000, ink=40))
    recorder = Recorder()
    monitor = VersionMonitor(CLASSES, recorder, reference, WINDOW)
    monitor.observe(*fake_answers(rng, WINDOW - 1, ink=200))
    assert all(math.isnan(value) for value in monitor.psi().values())
    assert recorder.psi == []
    # One batch larger than the window: only its last WINDOW images count.
    old, _ = fake_answers(rng, 50, ink=200)
    new, probabilities = fake_answers(rng, WINDOW, ink=40)
    monitor.observe(np.concatenate([old, new]), np.concatenate([probabilities[:50], probabilities]))
    assert monitor.psi()["input"] < 0.1


def test_a_profile_survives_its_json_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    pixels, probabilities = fake_answers(rng, 500, ink=40)
    profile = build_profile(probabilities, pixels, LABELS, dataset="fake")
    write_profile(tmp_path / PROFILE_FILE_NAME, profile)
    assert parse_profile(json.loads((tmp_path / PROFILE_FILE_NAME).read_text())) == profile
    broken = profile.as_dict()
    broken["signals"]["input"]["shares"] = [1.0]
    with pytest.raises(ProfileError, match="input"):
        parse_profile(broken)


def test_a_profile_for_other_labels_leaves_monitoring_without_drift_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(3)
    pixels, probabilities = fake_answers(rng, 100, ink=40)
    write_profile(tmp_path / PROFILE_FILE_NAME, build_profile(probabilities[:, :3], pixels, "abc"))
    with caplog.at_level(logging.WARNING):
        monitor = monitor_for(classifier_info(), Recorder(), tmp_path / PROFILE_FILE_NAME, WINDOW)
    assert monitor is not None
    assert not monitor.drift
    assert [r.getMessage() for r in caplog.records if "3 labels" in r.getMessage()]
    (tmp_path / PROFILE_FILE_NAME).write_text("{not json")
    monitor = monitor_for(classifier_info(), Recorder(), tmp_path / PROFILE_FILE_NAME, WINDOW)
    assert monitor is not None
    assert not monitor.drift


def test_models_that_are_not_classifiers_get_no_monitor(tmp_path: Path) -> None:
    no_labels = classifier_info(labels=())
    assert monitor_for(no_labels, Recorder(), tmp_path / PROFILE_FILE_NAME) is None
    assert monitor_for(classifier_info(), Recorder(), tmp_path / PROFILE_FILE_NAME, 0) is None


def test_shadow_version_parameter_is_read_from_config(tmp_path: Path) -> None:
    (tmp_path / "config.pbtxt").write_text(
        'parameters { key: "shadow_version" value: { string_value: "2" } }\n'
    )
    config = read_model_config(tmp_path, default_max_batch_size=8, default_max_queue_delay_s=0)
    assert config.shadow_version == "2"


async def test_the_shadow_link_counts_agreement_and_drops_beyond_its_limit() -> None:
    permutation = np.roll(np.arange(CLASSES), 1)
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def shadow_run(pixels: np.ndarray) -> dict[str, np.ndarray]:
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=10)
        return {"probabilities": np.eye(CLASSES, dtype=np.float32)[pixels[:, 0, 0, 0] % 10]}

    shadow = DynamicBatcher(shadow_run, max_batch_size=64)
    await shadow.start()
    recorder = Recorder()
    link = ShadowLink("2", shadow, recorder, limit=30)
    rng = np.random.default_rng(4)
    try:
        pixels = rng.integers(0, 10, size=(10, 1, 28, 28)).astype(np.uint8)
        classes = pixels[:, 0, 0, 0] % 10
        for top in (classes, classes, permutation[classes], classes):
            link.forward(pixels.copy(), top)
        assert recorder.shadow[DROPPED] == 10  # 30 pending: the fourth copy is over the limit
        release.set()
        await wait_until(lambda: sum(recorder.shadow.values()) == 40)
        assert recorder.shadow == {AGREE: 20, DISAGREE: 10, DROPPED: 10}

        # Through the tap: the batches are gathered, then copied to the shadow at once.
        tap = BatchTap(None, recorder)
        tap.shadow = ShadowLink("2", shadow, recorder, limit=30)
        for _ in range(2):
            tap(pixels, {"probabilities": np.eye(CLASSES, dtype=np.float32)[classes]})
        await wait_until(lambda: sum(recorder.shadow.values()) == 60)
        assert recorder.shadow == {AGREE: 40, DISAGREE: 10, DROPPED: 10}
    finally:
        release.set()
        await shadow.stop()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll `condition` (outcomes are counted from futures' callbacks: no event to await)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    for _ in range(int(timeout_s / POLL_S)):
        if condition() or asyncio.get_running_loop().time() > deadline:
            return
        await asyncio.sleep(POLL_S)


async def test_the_tap_hands_batches_to_the_monitor_per_64_images_or_after_a_moment() -> None:
    rng = np.random.default_rng(5)
    recorder = Recorder()
    profile = profile_of(fake_answers(rng, 500, ink=40))
    tap = BatchTap(VersionMonitor(CLASSES, recorder, profile), None)
    for _ in range(3):
        pixels, probabilities = fake_answers(rng, 20, ink=40)
        tap(pixels, {"probabilities": probabilities})
    assert recorder.labels.sum() == 0  # 60 images gathered, none handed over yet
    pixels, probabilities = fake_answers(rng, 20, ink=40)
    tap(pixels, {"probabilities": probabilities})
    assert recorder.labels.sum() == 80  # the 64th image flushed them all at once
    tap(pixels[:5], {"probabilities": probabilities[:5]})
    await asyncio.sleep(3 * FLUSH_DELAY_S)
    assert recorder.labels.sum() == 85  # and a lone batch once its moment has passed
