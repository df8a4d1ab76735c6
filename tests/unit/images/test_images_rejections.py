"""What decode_image refuses, and that the message tells the caller what to fix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.images import DEFAULT_MAX_DECODED_PIXELS, decode_image
from tests.unit.images.encoded_images import encode, jpeg_declaring, png, png_declaring

# Far beyond anything: 10^10 pixels, 10 GB of grey if a decoder believed the header.
BOMB_SIDE = 100_000
# Over our default limit (16 Mi) but under Pillow's own guard (~89 M): only our check stops it.
OVER_OUR_LIMIT_SIDE = 5_000
ACCEPTED_HINT = "PNG or JPEG"
PNG_MAX_SIDE = 2**31 - 1  # the PNG specification's largest width or height


@pytest.fixture
def pixel_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the size of every image whose pixels Pillow decodes (a spy, not a fake)."""
    loads: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spying_load(image: ImageFile.ImageFile) -> Any:
        loads.append(image.size)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spying_load)
    return loads


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(png_declaring(BOMB_SIDE, BOMB_SIDE), id="png-100000x100000"),
        pytest.param(png_declaring(OVER_OUR_LIMIT_SIDE, OVER_OUR_LIMIT_SIDE), id="png-5000x5000"),
        pytest.param(png_declaring(1, PNG_MAX_SIDE), id="png-1x2147483647"),
        pytest.param(jpeg_declaring(60_000, 60_000), id="jpeg-60000x60000"),
        pytest.param(jpeg_declaring(OVER_OUR_LIMIT_SIDE, OVER_OUR_LIMIT_SIDE), id="jpeg-5000x5000"),
    ],
)
def test_an_image_declaring_too_many_pixels_is_refused_before_decoding(
    data: bytes, pixel_loads: list[tuple[int, int]]
) -> None:
    with pytest.raises(InvalidInputError, match="pixels") as raised:
        decode_image(data)
    assert str(DEFAULT_MAX_DECODED_PIXELS) in str(raised.value)
    assert pixel_loads == []


def test_a_real_jpeg_over_a_configured_limit_is_refused(pixel_loads: list[tuple[int, int]]) -> None:
    data = encode(Image.new("RGB", (300, 200), (255, 255, 255)), "JPEG")
    with pytest.raises(InvalidInputError, match=r"300x200 = 60000 pixels, more than the 59999"):
        decode_image(data, max_pixels=59_999)
    assert pixel_loads == []
    assert decode_image(data, max_pixels=60_000).shape == (28, 28)


def test_a_genuine_image_over_the_default_limit_is_refused() -> None:
    side = 4_097  # 4097^2 > 16 Mi; a flat image compresses to a few kB
    data = encode(Image.new("L", (side, side), 255), "PNG")
    with pytest.raises(InvalidInputError, match=f"{side}x{side}"):
        decode_image(data)


def test_the_headers_of_a_real_digit_decode_under_the_limit(sample_digits: Any) -> None:
    images, _ = sample_digits
    assert decode_image(png(images[0]), max_pixels=28 * 28).shape == (28, 28)


@pytest.mark.parametrize(
    ("image_format", "name"),
    [("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"), ("WEBP", "WebP"), ("ICO", "ICO")],
)
def test_other_formats_are_refused_naming_what_was_sent(image_format: str, name: str) -> None:
    data = encode(Image.new("RGB", (32, 32), (255, 0, 0)), image_format)
    with pytest.raises(InvalidInputError, match="not accepted") as raised:
        decode_image(data)
    assert f"got {name} data" in str(raised.value)
    assert ACCEPTED_HINT in str(raised.value)


def test_random_bytes_are_unrecognised_data() -> None:
    noise = np.random.default_rng(0).integers(0, 256, 1_000, dtype=np.uint8).tobytes()
    with pytest.raises(InvalidInputError, match="unrecognised data") as raised:
        decode_image(noise)
    assert ACCEPTED_HINT in str(raised.value)


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
@pytest.mark.parametrize("keep", [0.9, 0.5, 0.1])
def test_a_truncated_file_is_refused(image_format: str, keep: float) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), image_format)
    with pytest.raises(InvalidInputError, match="corrupt or truncated"):
        decode_image(data[: int(len(data) * keep)])


def test_a_png_declaring_zero_width_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="PNG"):
        decode_image(png_declaring(0, 10))


def test_a_png_with_a_corrupted_checksum_is_refused(sample_digits: Any) -> None:
    images, _ = sample_digits
    data = bytearray(png(images[0]))
    data[29] ^= 0xFF  # inside IHDR's CRC
    with pytest.raises(InvalidInputError, match="PNG"):
        decode_image(bytes(data))
