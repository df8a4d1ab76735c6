"""Every PNG/JPEG flavour becomes the same white-on-black digit."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import ExifTags, Image

from mnist_serving_server.core.images import (
    DIGIT_BOX_SIDE,
    MIN_INK_CONTRAST,
    MNIST_SIDE,
    decode_image,
    to_mnist_digit,
    to_white_on_black,
)
from tests.unit.images.encoded_images import MAX_GREY, correlation, encode, png

SIXTEEN_BIT_SCALE = 257  # 255 * 257 = 65535
# A lossy JPEG of the same digit is close, not identical.
JPEG_CORRELATION = 0.97
NOISE_SIGMA = 6.0
PAPER_GREY = 200.0
INK_DEPTH = 150.0
EXIF_ROTATE_90_CLOCKWISE = 6


@pytest.fixture(scope="module")
def digit(sample_digits: tuple[Any, Any]) -> npt.NDArray[np.uint8]:
    images, _ = sample_digits
    picked: npt.NDArray[np.uint8] = images[7]
    return picked


@pytest.fixture(scope="module")
def expected(digit: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """What the plain 8-bit grey PNG gives: every other encoding must give the same."""
    return decode_image(png(digit))


def _rgba(rgb: tuple[int, int, int], alpha: npt.NDArray[np.uint8]) -> Image.Image:
    pixels = np.empty((*alpha.shape, 4), dtype=np.uint8)
    pixels[..., :3] = rgb
    pixels[..., 3] = alpha
    return Image.fromarray(pixels, "RGBA")


def test_black_ink_on_a_transparent_canvas(digit: Any, expected: Any) -> None:
    # What an HTML canvas exports: black strokes, the rest transparent black.
    result = decode_image(encode(_rgba((0, 0, 0), digit), "PNG"))
    np.testing.assert_array_equal(result, expected)


def test_white_ink_on_a_transparent_canvas(digit: Any, expected: Any) -> None:
    result = decode_image(encode(_rgba((255, 255, 255), digit), "PNG"))
    np.testing.assert_array_equal(result, expected)


def test_grey_with_alpha(digit: Any, expected: Any) -> None:
    grey_alpha = np.stack([np.zeros_like(digit), digit], axis=-1)
    result = decode_image(encode(Image.fromarray(grey_alpha, "LA"), "PNG"))
    np.testing.assert_array_equal(result, expected)


def test_sixteen_bit_grey(digit: Any, expected: Any) -> None:
    wide = digit.astype(np.uint16) * SIXTEEN_BIT_SCALE
    encoded = encode(Image.fromarray(wide), "PNG")
    with Image.open(io.BytesIO(encoded)) as reopened:
        assert reopened.mode.startswith("I;16")
    np.testing.assert_array_equal(decode_image(encoded), expected)


def test_palette(digit: Any, expected: Any) -> None:
    palette_image = Image.fromarray(digit).convert("P")
    assert palette_image.mode == "P"
    np.testing.assert_array_equal(decode_image(encode(palette_image, "PNG")), expected)


def test_palette_with_a_transparent_entry(digit: Any, expected: Any) -> None:
    # Background pixels use palette entry 0, which the tRNS chunk makes transparent.
    palette_image = Image.fromarray(digit).convert("P")
    encoded = encode(palette_image, "PNG", transparency=0)
    np.testing.assert_array_equal(decode_image(encoded), expected)


def test_one_bit(digit: Any) -> None:
    bilevel = Image.fromarray(digit).convert("1", dither=Image.Dither.NONE)
    result = decode_image(encode(bilevel, "PNG"))
    assert correlation(result, digit) > JPEG_CORRELATION - 0.1


def test_coloured_ink_on_coloured_paper(digit: Any, expected: Any) -> None:
    # Dark blue ink on light yellow paper, RGB.
    paper = np.array([250, 240, 160], dtype=np.float64)
    ink = np.array([20, 30, 120], dtype=np.float64)
    share = (digit.astype(np.float64) / MAX_GREY)[..., None]
    rgb = np.rint(paper * (1 - share) + ink * share).astype(np.uint8)
    result = decode_image(png(rgb))
    assert correlation(result, expected) > JPEG_CORRELATION


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg_modes(digit: Any, expected: Any, mode: str) -> None:
    image = Image.fromarray(MAX_GREY - digit).convert(mode)
    result = decode_image(encode(image, "JPEG", quality=95))
    assert correlation(result, expected) > JPEG_CORRELATION


def test_dark_ink_on_noisy_grey_paper(digit: Any, expected: Any) -> None:
    # A photo-like page: grey paper with sensor noise, the digit in the middle.
    rng = np.random.default_rng(0)
    ink = np.asarray(Image.fromarray(digit).resize((140, 140), Image.Resampling.BICUBIC))
    page = np.full((200, 260), PAPER_GREY)
    page[30:170, 60:200] -= ink.astype(np.float64) * (INK_DEPTH / MAX_GREY)
    page += rng.normal(0.0, NOISE_SIGMA, page.shape)
    encoded = encode(Image.fromarray(np.clip(page, 0, MAX_GREY).astype(np.uint8)), "JPEG")
    assert correlation(decode_image(encoded), expected) > JPEG_CORRELATION - 0.05


@pytest.mark.parametrize(
    ("mode", "colour"), [("L", 0), ("L", 255), ("RGB", (200, 10, 10)), ("RGBA", (9, 9, 9, 0))]
)
def test_a_blank_image_is_valid_and_gives_zeros(mode: str, colour: Any) -> None:
    blank = Image.new(mode, (40, 30), colour)
    for image_format in ("PNG", "JPEG") if mode != "RGBA" else ("PNG",):
        result = decode_image(encode(blank, image_format))
        assert result.shape == (MNIST_SIDE, MNIST_SIDE)
        assert result.dtype == np.uint8
        assert not result.any()


def test_contrast_below_the_minimum_is_no_ink() -> None:
    faint = np.full((30, 30), 100, dtype=np.uint8)
    faint[10:20, 10:20] += MIN_INK_CONTRAST - 1
    assert not to_white_on_black(faint).any()
    faint[15, 15] = 100 + MIN_INK_CONTRAST + 1
    assert to_white_on_black(faint).max() == MAX_GREY


def test_dark_on_light_is_inverted_and_stretched() -> None:
    page = np.full((10, 12), 180, dtype=np.uint8)
    page[4:6, 4:8] = 30
    result = to_white_on_black(page)
    assert result[0, 0] == 0
    assert result[4, 4] == MAX_GREY


def test_the_larger_side_becomes_20_px_and_the_aspect_ratio_is_kept() -> None:
    bar = np.zeros((300, 300), dtype=np.uint8)
    bar[100:110, 20:220] = MAX_GREY  # 10 x 200: aspect 1:20
    result = to_mnist_digit(bar)
    rows = np.flatnonzero(result.any(axis=1))
    columns = np.flatnonzero(result.any(axis=0))
    assert columns[-1] - columns[0] + 1 == DIGIT_BOX_SIDE
    assert rows[-1] - rows[0] + 1 <= 2


def test_a_tiny_dot_is_scaled_up_to_the_box() -> None:
    dot = np.zeros((50, 50), dtype=np.uint8)
    dot[10:13, 40:43] = MAX_GREY
    result = to_mnist_digit(dot)
    rows = np.flatnonzero(result.any(axis=1))
    assert rows[-1] - rows[0] + 1 >= DIGIT_BOX_SIDE


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((28, 28), dtype=np.float32),
        np.zeros((28, 28, 3), dtype=np.uint8),
        np.zeros((0, 5), dtype=np.uint8),
    ],
)
def test_the_array_functions_reject_wrong_arrays(bad: Any) -> None:
    with pytest.raises(ValueError, match="2-D uint8"):
        to_mnist_digit(bad)
    with pytest.raises(ValueError, match="2-D uint8"):
        to_white_on_black(bad)


def test_a_phone_photo_is_turned_upright_by_its_exif_orientation(digit: Any, expected: Any) -> None:
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise for display,
    # so a camera stores an upright digit turned 90 degrees counter-clockwise.
    stored = Image.fromarray(MAX_GREY - digit).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = EXIF_ROTATE_90_CLOCKWISE
    result = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert correlation(result, expected) > JPEG_CORRELATION
    without_orientation = decode_image(encode(stored, "JPEG", quality=95))
    assert correlation(without_orientation, expected) < JPEG_CORRELATION
