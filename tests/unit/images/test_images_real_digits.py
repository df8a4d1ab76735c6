"""The pipeline on real MNIST digits: it preserves them, and recovers them from photos."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from mnist_serving_server.core.images import (
    CENTRE_OF_MASS_INDEX,
    INK_THRESHOLD,
    MNIST_SIDE,
    decode_image,
)
from tests.unit.images.encoded_images import (
    centre_of_mass,
    correlation,
    encode,
    png,
    upscaled_dark_on_light_jpeg,
)

UPSCALED_DIGITS = 200
# The upscaled, blurred JPEG is a different picture of the same digit: most keep a high
# pixel correlation, thin strokes (a "1") get relatively fatter and correlate less.
UPSCALED_MEDIAN_CORRELATION = 0.9
UPSCALED_SHARE_ABOVE = 0.9
UPSCALED_CORRELATION_FLOOR = 0.8
LABEL_AGREEMENT = 0.95
# A round-tripped digit may move by one pixel when its centre of mass sits on a half
# pixel, and loses only faint pixels outside its ink box.
ROUND_TRIP_SHARE_EXACT_WITHIN_FAINT = 0.98
ROUND_TRIP_SHIFTED_CORRELATION = 0.99
CENTRING_TOLERANCE_PX = 1.0
OFF_CENTRE_CANVAS = (60, 90)  # rows, columns
OFF_CENTRE_OFFSET = (3, 55)


def _best_shifted_correlation(result: Any, original: Any) -> float:
    best = -1.0
    for rows in (-1, 0, 1):
        for columns in (-1, 0, 1):
            shifted = np.roll(result, (rows, columns), axis=(0, 1))
            best = max(best, correlation(shifted, original))
    return best


def test_a_28px_png_of_an_mnist_digit_comes_back_nearly_identical(
    sample_digits: tuple[Any, Any],
) -> None:
    images, _ = sample_digits
    results = np.stack([decode_image(png(digit)) for digit in images])

    assert results.shape == images.shape
    assert results.dtype == np.uint8
    worst_pixel = np.abs(results.astype(int) - images.astype(int)).reshape(len(images), -1).max(1)
    assert (worst_pixel <= INK_THRESHOLD + 1).mean() >= ROUND_TRIP_SHARE_EXACT_WITHIN_FAINT
    shifted = [_best_shifted_correlation(r, o) for r, o in zip(results, images, strict=True)]
    assert min(shifted) > ROUND_TRIP_SHIFTED_CORRELATION


def test_every_result_has_its_centre_of_mass_at_the_middle(
    sample_digits: tuple[Any, Any],
) -> None:
    images, _ = sample_digits
    for digit in images[:UPSCALED_DIGITS]:
        rows, columns = centre_of_mass(decode_image(png(digit)))
        assert abs(rows - CENTRE_OF_MASS_INDEX) <= CENTRING_TOLERANCE_PX
        assert abs(columns - CENTRE_OF_MASS_INDEX) <= CENTRING_TOLERANCE_PX


def test_an_off_centre_digit_on_a_larger_canvas_is_centred(
    sample_digits: tuple[Any, Any],
) -> None:
    images, _ = sample_digits
    for digit in images[:UPSCALED_DIGITS:10]:
        canvas = np.zeros(OFF_CENTRE_CANVAS, dtype=np.uint8)
        top, left = OFF_CENTRE_OFFSET
        canvas[top : top + MNIST_SIDE, left : left + MNIST_SIDE] = digit
        result = decode_image(png(canvas))

        rows, columns = centre_of_mass(result)
        assert abs(rows - CENTRE_OF_MASS_INDEX) <= CENTRING_TOLERANCE_PX
        assert abs(columns - CENTRE_OF_MASS_INDEX) <= CENTRING_TOLERANCE_PX
        assert _best_shifted_correlation(result, digit) > ROUND_TRIP_SHIFTED_CORRELATION


@pytest.fixture(scope="module")
def upscaled_results(sample_digits: tuple[Any, Any]) -> tuple[Any, Any]:
    images, _ = sample_digits
    # Every 5th digit: 200 spread over all ten classes (the split is sorted by label).
    originals = images[:: len(images) // UPSCALED_DIGITS][:UPSCALED_DIGITS]
    results = np.stack([decode_image(upscaled_dark_on_light_jpeg(d)) for d in originals])
    return originals, results


def test_an_upscaled_dark_on_light_jpeg_turns_back_into_the_digit(
    upscaled_results: tuple[Any, Any],
) -> None:
    originals, results = upscaled_results
    correlations = np.array([correlation(r, o) for r, o in zip(results, originals, strict=True)])

    assert np.median(correlations) > UPSCALED_MEDIAN_CORRELATION
    assert (correlations > UPSCALED_CORRELATION_FLOOR).mean() >= UPSCALED_SHARE_ABOVE
    # White digit on black, as MNIST: the frame's border is background.
    assert results[:, 0, :].max() == 0
    assert results[:, :, 0].max() == 0


def test_the_model_reads_the_upscaled_jpeg_as_it_reads_the_original(
    upscaled_results: tuple[Any, Any], model_dir: Path
) -> None:
    originals, results = upscaled_results
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )

    def labels(pixels: Any) -> Any:
        feed = {"pixels": pixels.reshape(-1, 1, MNIST_SIDE, MNIST_SIDE)}
        return session.run(["probabilities"], feed)[0].argmax(axis=1)

    assert (labels(results) == labels(originals)).mean() >= LABEL_AGREEMENT


def test_a_large_jpeg_of_a_digit_is_recovered(
    sample_digits: tuple[Any, Any],
) -> None:
    images, _ = sample_digits
    digit = images[0]
    side = 2400  # libjpeg decodes this at 1/8 scale (JPEG_DRAFT_MIN_SIDE)
    photo = Image.fromarray(255 - digit).resize((side, side), Image.Resampling.BICUBIC)
    result = decode_image(encode(photo.convert("RGB"), "JPEG"))

    assert correlation(result, digit) > UPSCALED_MEDIAN_CORRELATION
