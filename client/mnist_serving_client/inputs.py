"""Turn what callers have (arrays, PIL images, files, PNG/JPEG bytes) into wire images.

Two kinds of input, and they mean different things:

* numpy arrays are MNIST pixels as they are: 28x28, white digit on black, uint8 0-255 or
  float in [0, 1]. They travel as 784 raw bytes and the server classifies them unchanged.
* PIL images, files and PNG/JPEG bytes are pictures of a digit. They travel encoded and the
  server turns them into MNIST-style pixels (grayscale, inverted if dark-on-light, fitted
  and centred; docs/preprocessing.md). Sending files needs no Pillow on the client.

Everything is validated here, before anything is sent, so mistakes surface as
`InvalidInputError` with a message that says what to pass instead.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from mnist_serving_client.errors import InvalidInputError
from mnist_serving_proto import classifier_pb2

if TYPE_CHECKING:
    from PIL import Image as PILImage

IMAGE_SIDE = 28
PIXELS_PER_IMAGE = IMAGE_SIDE * IMAGE_SIDE
MAX_UINT8 = 255
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
# Pillow modes that PNG stores as they are; other modes (CMYK, YCbCr, ...) go through RGB.
PNG_NATIVE_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"})
# Split requests below this many bytes too, so large PNG/JPEG files never hit the server's
# message limit (16 MiB by default) even when few of them are sent at once.
MAX_REQUEST_BYTES = 8 * 1024 * 1024

ArrayLike: TypeAlias = "np.ndarray[Any, Any]"
ImageInput: TypeAlias = "np.ndarray[Any, Any] | str | os.PathLike[str] | bytes | bytearray | memoryview | PILImage.Image"  # noqa: E501
"""One image (or, for arrays, a batch): what `classify_one` accepts."""
ImagesInput: TypeAlias = "ImageInput | Iterable[ImageInput]"
"""What `classify` accepts: one input as above, or any iterable of them."""

_ACCEPTED = (
    "a numpy array of shape (28, 28), (N, 28, 28) or (N, 1, 28, 28) (uint8, or float in [0, 1]), "
    "a PIL image, a path to a PNG/JPEG file, or PNG/JPEG bytes"
)


def encode_images(images: ImagesInput) -> list[classifier_pb2.Image]:
    """Every image of `images` as a wire `Image`, in order."""
    if _is_single_input(images):
        encoded = list(_encode_one_input(images))
    elif isinstance(images, Iterable):
        encoded = []
        for position, item in enumerate(images):
            if not _is_single_input(item):
                raise InvalidInputError(
                    f"item {position}: unsupported type {type(item).__name__}; expected {_ACCEPTED}"
                )
            encoded.extend(_encode_one_input(item))
    else:
        raise InvalidInputError(f"unsupported type {type(images).__name__}; expected {_ACCEPTED}")
    if not encoded:
        raise InvalidInputError(f"no images given; expected {_ACCEPTED}")
    return encoded


def encode_single_image(image: ImageInput) -> classifier_pb2.Image:
    """Exactly one wire `Image` (for `classify_one` and each item of a stream)."""
    if not _is_single_input(image):
        raise InvalidInputError(f"unsupported type {type(image).__name__}; expected {_ACCEPTED}")
    encoded = list(_encode_one_input(image))
    if len(encoded) != 1:
        raise InvalidInputError(f"expected exactly one image, got {len(encoded)}")
    return encoded[0]


def pixels_from_array(array: ArrayLike) -> ArrayLike:
    """A validated copy-if-needed of `array` as uint8 [N, 28, 28]."""
    shape = tuple(array.shape)
    if shape == (IMAGE_SIDE, IMAGE_SIDE):
        batch = array.reshape(1, IMAGE_SIDE, IMAGE_SIDE)
    elif len(shape) == 3 and shape[1:] == (IMAGE_SIDE, IMAGE_SIDE):
        batch = array
    elif len(shape) == 4 and shape[1:] == (1, IMAGE_SIDE, IMAGE_SIDE):
        batch = array.reshape(shape[0], IMAGE_SIDE, IMAGE_SIDE)
    else:
        raise InvalidInputError(
            f"image array has shape {shape}; expected (28, 28), (N, 28, 28) or (N, 1, 28, 28)"
        )
    if batch.dtype == np.uint8:
        return np.ascontiguousarray(batch)
    if np.issubdtype(batch.dtype, np.floating):
        return _pixels_from_floats(batch)
    raise InvalidInputError(
        f"image array has dtype {batch.dtype}; expected uint8 pixels (0-255) or floats in [0, 1]"
        " (convert integer arrays with .astype(numpy.uint8))"
    )


def split_requests(
    images: list[classifier_pb2.Image], max_images_per_request: int
) -> Iterator[list[classifier_pb2.Image]]:
    """Consecutive runs of `images`, each within the image-count and byte limits."""
    chunk: list[classifier_pb2.Image] = []
    chunk_bytes = 0
    for image in images:
        size = len(image.pixels) + len(image.encoded)
        if chunk and (
            len(chunk) >= max_images_per_request or chunk_bytes + size > MAX_REQUEST_BYTES
        ):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(image)
        chunk_bytes += size
    if chunk:
        yield chunk


def _pixels_from_floats(batch: ArrayLike) -> ArrayLike:
    if not np.all(np.isfinite(batch)):
        raise InvalidInputError("image array holds NaN or infinite values; expected [0, 1]")
    low, high = float(batch.min()), float(batch.max())
    if low < 0.0 or high > 1.0:
        raise InvalidInputError(
            f"float image values must lie in [0, 1] (got {low:g} to {high:g}); "
            "pass uint8 arrays for 0-255 pixels"
        )
    # round(x * 255): k/255 maps back to exactly k, as the server's FP32 path does.
    return np.rint(batch.astype(np.float64) * MAX_UINT8).astype(np.uint8)


def _is_single_input(item: object) -> bool:
    return isinstance(item, np.ndarray | str | os.PathLike | bytes | bytearray | memoryview) or (
        _is_pil_image(item)
    )


def _is_pil_image(item: object) -> bool:
    # Only look when Pillow is already loaded: a PIL image cannot exist otherwise, and the
    # SDK must not need Pillow.
    pil_image_module = sys.modules.get("PIL.Image")
    return pil_image_module is not None and isinstance(item, pil_image_module.Image)


def _encode_one_input(item: Any) -> Iterator[classifier_pb2.Image]:
    if isinstance(item, np.ndarray):
        pixels = pixels_from_array(item)
        if pixels.shape[0] == 0:
            raise InvalidInputError("image array holds no images (N = 0)")
        raw = pixels.tobytes()
        for start in range(0, len(raw), PIXELS_PER_IMAGE):
            yield classifier_pb2.Image(pixels=raw[start : start + PIXELS_PER_IMAGE])
    elif isinstance(item, str | os.PathLike):
        yield classifier_pb2.Image(encoded=_read_image_file(Path(item)))
    elif isinstance(item, bytes | bytearray | memoryview):
        yield classifier_pb2.Image(encoded=_checked_encoded(bytes(item), "image bytes"))
    else:
        yield classifier_pb2.Image(encoded=_png_from_pil(item))


def _read_image_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InvalidInputError(f"cannot read image file {path}: {error.strerror}") from error
    return _checked_encoded(data, f"file {path}")


def _checked_encoded(data: bytes, what: str) -> bytes:
    if not (data.startswith(PNG_SIGNATURE) or data.startswith(JPEG_SIGNATURE)):
        raise InvalidInputError(
            f"{what} is not a PNG or JPEG image; for raw 28x28 pixels pass a numpy array"
        )
    return data


def _png_from_pil(image: PILImage.Image) -> bytes:
    if image.mode not in PNG_NATIVE_MODES:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
