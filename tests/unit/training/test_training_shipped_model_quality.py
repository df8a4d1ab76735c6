"""How well the shipped model_repository/mnist/1 classifies digits, straight and moved.

The held-out digits as they are (>= 98.5%), and the same digits each randomly rotated by up to
15 degrees, shifted by up to 3 pixels along each axis and scaled by up to 15% (>= 95%): digits
as people draw them on the page or show them to a camera. The moved digits are made here with
Pillow and numpy's generator, independently of the training code's augmentation, with a fixed
seed; the model is run by ONNX Runtime as the server runs it. Also: the example digits that
ship with the client are classified as what they show, and the shipped files name nothing of
the machine that trained them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from mnist_serving_training.export import MACHINE_SPECIFIC_NODE_METADATA
from mnist_serving_training.inference import create_session, predict_probabilities
from mnist_serving_training.report import REPORT_FILENAME
from mnist_serving_training.repository import MODEL_FILENAME

REPO_ROOT = Path(__file__).resolve().parents[3]
SHIPPED_DIR = REPO_ROOT / "model_repository" / "mnist" / "1"
SHIPPED_MODEL = SHIPPED_DIR / MODEL_FILENAME
SHIPPED_FEATURES_MODEL = REPO_ROOT / "model_repository" / "mnist_features" / "1" / MODEL_FILENAME
# An absolute POSIX path or a Windows drive path, anywhere in a string.
ABSOLUTE_PATH = re.compile(r"(^|[\s'\"=(])(/[A-Za-z0-9_.-]+/|[A-Za-z]:\\)")
EXAMPLE_DIGITS = REPO_ROOT / "client" / "examples" / "digits"

MIN_HELD_OUT_ACCURACY = 0.985
MIN_MOVED_ACCURACY = 0.95
MAX_ROTATION_DEGREES = 15.0
MAX_SHIFT_PIXELS = 3.0
MAX_SCALE_CHANGE = 0.15
MOVE_SEED = 29
SIDE = 28
DIGIT_COUNT = 10


def move_digit(
    image: np.ndarray, degrees: float, shift: tuple[float, float], scale: float
) -> np.ndarray:
    """Rotate by ``degrees``, scale by ``scale`` (about the centre), then shift (x, y) pixels.

    Pillow's affine transform maps each output pixel to the input pixel it samples:
    p_in = R(-a) (p_out - centre - shift) / scale + centre.
    """
    centre = SIDE / 2
    angle = math.radians(degrees)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    dx, dy = centre + shift[0], centre + shift[1]
    coefficients = (
        cos,
        sin,
        centre - cos * dx - sin * dy,
        -sin,
        cos,
        centre + sin * dx - cos * dy,
    )
    moved = Image.fromarray(image).transform(
        (SIDE, SIDE),
        Image.Transform.AFFINE,
        coefficients,
        resample=Image.Resampling.BILINEAR,
        fillcolor=0,
    )
    return np.asarray(moved, dtype=np.uint8)


def moved_digits(images: np.ndarray, seed: int = MOVE_SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    count = len(images)
    degrees = rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, count)
    shifts = rng.uniform(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS, (count, 2))
    scales = rng.uniform(1 - MAX_SCALE_CHANGE, 1 + MAX_SCALE_CHANGE, count)
    return np.stack(
        [
            move_digit(image, float(a), (float(sx), float(sy)), float(s))
            for image, a, (sx, sy), s in zip(images, degrees, shifts, scales, strict=True)
        ]
    )


def _accuracy(images: np.ndarray, labels: np.ndarray) -> float:
    probabilities = predict_probabilities(create_session(SHIPPED_MODEL), images)
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def test_moving_a_digit_moves_its_ink() -> None:
    """The transform itself: a shift moves the centre of mass, a rotation keeps it."""
    image = np.zeros((SIDE, SIDE), dtype=np.uint8)
    image[10:18, 12:16] = 255
    rows, columns = np.indices(image.shape)

    def centre_of_mass(picture: np.ndarray) -> tuple[float, float]:
        weights = picture.astype(np.float64)
        return float((columns * weights).sum() / weights.sum()), float(
            (rows * weights).sum() / weights.sum()
        )

    x, y = centre_of_mass(image)
    shifted_x, shifted_y = centre_of_mass(move_digit(image, 0.0, (3.0, -2.0), 1.0))
    assert shifted_x - x == pytest.approx(3.0, abs=0.05)
    assert shifted_y - y == pytest.approx(-2.0, abs=0.05)
    turned = move_digit(image, 90.0, (0.0, 0.0), 1.0)
    # A tall bar turned by 90 degrees lies flat.
    assert np.count_nonzero(turned.sum(axis=0)) > np.count_nonzero(turned.sum(axis=1))
    enlarged = move_digit(image, 0.0, (0.0, 0.0), 1.15)
    assert enlarged.astype(np.float64).sum() > image.astype(np.float64).sum()


def test_the_shipped_model_classifies_the_held_out_digits(
    sample_digits: tuple[np.ndarray, np.ndarray],
) -> None:
    images, labels = sample_digits
    assert _accuracy(images, labels) >= MIN_HELD_OUT_ACCURACY


def test_the_shipped_model_classifies_tilted_shifted_and_scaled_digits(
    sample_digits: tuple[np.ndarray, np.ndarray],
) -> None:
    images, labels = sample_digits
    moved = moved_digits(images)
    assert not np.array_equal(moved, images)
    assert _accuracy(moved, labels) >= MIN_MOVED_ACCURACY


def test_the_shipped_model_classifies_the_client_example_digits() -> None:
    images = np.stack(
        [
            np.asarray(Image.open(EXAMPLE_DIGITS / f"digit_{digit}.png").convert("L"))
            for digit in range(DIGIT_COUNT)
        ]
    )
    probabilities = predict_probabilities(create_session(SHIPPED_MODEL), images)
    assert probabilities.argmax(axis=1).tolist() == list(range(DIGIT_COUNT))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def test_the_shipped_files_name_no_path_of_the_training_machine() -> None:
    report = json.loads((SHIPPED_DIR / REPORT_FILENAME).read_text())
    assert report["model_path"] == "mnist/1/model.onnx"
    assert [text for text in _strings(report) if ABSOLUTE_PATH.search(text)] == []
    for path in (SHIPPED_MODEL, SHIPPED_FEATURES_MODEL):
        assert str(REPO_ROOT).encode() not in path.read_bytes()
        model = onnx.load(str(path))
        keys = {prop.key for node in model.graph.node for prop in node.metadata_props}
        assert not keys & set(MACHINE_SPECIFIC_NODE_METADATA)
        texts = [prop.value for node in model.graph.node for prop in node.metadata_props]
        texts += [prop.value for prop in model.metadata_props]
        assert [text for text in texts if ABSOLUTE_PATH.search(text)] == []
