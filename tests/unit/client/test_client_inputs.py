"""Every accepted image form becomes the right wire images; every mistake a clear error."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_serving_client.errors import InvalidInputError
from mnist_serving_client.inputs import (
    MAX_REQUEST_BYTES,
    PIXELS_PER_IMAGE,
    encode_images,
    encode_single_image,
    pixels_from_array,
    split_requests,
)
from mnist_serving_proto import classifier_pb2

RNG_SEED = 7


@pytest.fixture
def digits() -> np.ndarray:
    return np.random.default_rng(RNG_SEED).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("shape", [(5, 28, 28), (5, 1, 28, 28)])
def test_batches_become_one_raw_image_each_in_order(digits: np.ndarray, shape: tuple[int, ...]):
    encoded = encode_images(digits.reshape(shape))
    assert [image.pixels for image in encoded] == [digit.tobytes() for digit in digits]
    assert all(len(image.pixels) == PIXELS_PER_IMAGE for image in encoded)


def test_single_2d_array_is_one_image(digits: np.ndarray):
    assert encode_single_image(digits[0]).pixels == digits[0].tobytes()


def test_floats_in_unit_range_round_to_the_same_pixels(digits: np.ndarray):
    as_floats = digits.astype(np.float32) / 255
    np.testing.assert_array_equal(pixels_from_array(as_floats), digits)


def test_non_contiguous_arrays_are_sent_as_their_values(digits: np.ndarray):
    transposed = digits.transpose(0, 2, 1)
    assert encode_images(transposed)[0].pixels == np.ascontiguousarray(transposed[0]).tobytes()


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((28, 27), np.uint8), "shape (28, 27)"),
        (np.zeros((2, 3, 28, 28), np.uint8), "shape (2, 3, 28, 28)"),
        (np.zeros(784, np.uint8), "shape (784,)"),
        (np.zeros((28, 28), np.int64), "dtype int64"),
        (np.zeros((28, 28), bool), "dtype bool"),
        (np.full((28, 28), 1.5), "[0, 1]"),
        (np.full((28, 28), -0.1, np.float32), "[0, 1]"),
        (np.full((28, 28), np.nan), "NaN"),
        (np.full((28, 28), np.inf), "NaN or infinite"),
        (np.zeros((0, 28, 28), np.uint8), "no images"),
    ],
)
def test_bad_arrays_are_rejected_before_sending(array: np.ndarray, message: str):
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        encode_images(array)


def test_invalid_input_error_is_a_value_error():
    with pytest.raises(ValueError, match="dtype"):
        encode_images(np.zeros((28, 28), np.int32))


def test_files_and_bytes_travel_encoded(tmp_path: Path, digits: np.ndarray):
    data = png_bytes(digits[0])
    path = tmp_path / "digit.png"
    path.write_bytes(data)
    encoded = encode_images([path, str(path), data, bytearray(data), memoryview(data)])
    assert [image.encoded for image in encoded] == [data] * 5
    assert all(image.WhichOneof("data") == "encoded" for image in encoded)


def test_jpeg_signature_is_accepted(digits: np.ndarray):
    buffer = io.BytesIO()
    Image.fromarray(digits[0], mode="L").save(buffer, format="JPEG")
    assert encode_single_image(buffer.getvalue()).encoded == buffer.getvalue()


def test_pil_images_are_sent_as_png_of_the_same_pixels(digits: np.ndarray):
    encoded = encode_single_image(Image.fromarray(digits[0], mode="L")).encoded
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded))), digits[0])


def test_pil_modes_png_cannot_store_are_converted():
    cmyk = Image.new("CMYK", (28, 28), (0, 0, 0, 255))
    decoded = Image.open(io.BytesIO(encode_single_image(cmyk).encoded))
    assert decoded.mode == "RGB"


def test_mixed_list_keeps_order(tmp_path: Path, digits: np.ndarray):
    data = png_bytes(digits[1])
    encoded = encode_images([digits[0], data, digits[2:4]])
    assert [image.WhichOneof("data") for image in encoded] == [
        "pixels",
        "encoded",
        "pixels",
        "pixels",
    ]
    assert encoded[3].pixels == digits[3].tobytes()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"GIF89a....", "not a PNG or JPEG"),
        (b"\x00" * PIXELS_PER_IMAGE, "for raw 28x28 pixels pass a numpy array"),
        (42, "unsupported type int"),
        ([], "no images given"),
        ([np.zeros((28, 28), np.uint8), 3.5], "item 1: unsupported type float"),
    ],
)
def test_unsupported_values_are_rejected(value: object, message: str):
    with pytest.raises(InvalidInputError, match=message):
        encode_images(value)  # type: ignore[arg-type]


def test_missing_and_non_image_files_are_rejected(tmp_path: Path):
    with pytest.raises(InvalidInputError, match="cannot read image file"):
        encode_images(tmp_path / "missing.png")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(InvalidInputError, match=r"notes.txt is not a PNG or JPEG"):
        encode_images(text_file)


def test_classify_one_needs_exactly_one_image(digits: np.ndarray):
    with pytest.raises(InvalidInputError, match="exactly one image, got 5"):
        encode_single_image(digits)


def test_requests_split_by_count_keep_order(digits: np.ndarray):
    images = encode_images(np.concatenate([digits] * 3))  # 15 images
    chunks = list(split_requests(images, max_images_per_request=4))
    assert [len(chunk) for chunk in chunks] == [4, 4, 4, 3]
    assert [image for chunk in chunks for image in chunk] == images


def test_requests_split_by_bytes():
    big = classifier_pb2.Image(encoded=b"\x89PNG\r\n\x1a\n" + b"\x00" * (MAX_REQUEST_BYTES // 3))
    chunks = list(split_requests([big] * 5, max_images_per_request=1024))
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
