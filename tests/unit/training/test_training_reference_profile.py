"""The shipped model's reference profile is what the profile command computes for it today."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mnist_serving_server.core.monitoring import PROFILE_FILE_NAME, parse_profile
from mnist_serving_training.data import load_mnist_sample
from mnist_serving_training.reference_profile import REPORT_KEY, profile_model
from mnist_serving_training.report import REPORT_FILENAME
from mnist_serving_training.repository import MODEL_FILENAME

SHIPPED_DIR = Path(__file__).resolve().parents[3] / "model_repository" / "mnist" / "1"
REGENERATE = (
    "regenerate it: python -m mnist_serving_training.reference_profile "
    "--model model_repository/mnist/1/model.onnx --dataset mnist-sample"
)


def test_the_shipped_profile_is_current_and_in_the_report() -> None:
    shipped_file = SHIPPED_DIR / PROFILE_FILE_NAME
    assert shipped_file.is_file(), REGENERATE
    shipped = parse_profile(json.loads(shipped_file.read_text(encoding="utf-8")))
    current = profile_model(SHIPPED_DIR / MODEL_FILENAME, load_mnist_sample())
    assert shipped.labels == current.labels
    for name in ("label_shares", "confidence_shares", "input_shares", "input_edges"):
        assert getattr(shipped, name) == pytest.approx(getattr(current, name), abs=1e-6), (
            f"{name}: {REGENERATE}"
        )
    report = json.loads((SHIPPED_DIR / REPORT_FILENAME).read_text(encoding="utf-8"))
    assert report[REPORT_KEY] == json.loads(shipped_file.read_text(encoding="utf-8"))
