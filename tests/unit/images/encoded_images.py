"""Encode arrays as PNG/JPEG bytes, and craft headers that declare huge images."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY_8_BIT = (8, 0)  # (bit depth, colour type) in IHDR
JPEG_START_OF_FRAME = b"\xff\xc0"
# In a baseline SOF0 segment: marker (2), length (2), precision (1), then height, width.
JPEG_SOF_SIZE_OFFSET = 5
UPSCALED_SIDE = 280
UPSCALE_BLUR_RADIUS = 2.0
JPEG_QUALITY = 85
MAX_GREY = 255


def encode(image: Image.Image, image_format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def png(pixels: npt.NDArray[Any], mode: str | None = None) -> bytes:
    return encode(Image.fromarray(pixels, mode), "PNG")


def upscaled_dark_on_light_jpeg(digit: npt.NDArray[np.uint8]) -> bytes:
    """A 280x280 JPEG of the digit, dark ink on white, interpolated and blurred a bit."""
    image = Image.fromarray(MAX_GREY - digit).resize(
        (UPSCALED_SIDE, UPSCALED_SIDE), Image.Resampling.BICUBIC
    )
    blurred = image.filter(ImageFilter.GaussianBlur(UPSCALE_BLUR_RADIUS))
    return encode(blurred.convert("RGB"), "JPEG", quality=JPEG_QUALITY)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    checksum = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", checksum)


def png_declaring(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring width x height 8-bit grey, with a tiny IDAT.

    Only a decoder that trusts the header would allocate width x height bytes for it.
    """
    bit_depth, colour_type = PNG_GREY_8_BIT
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    first_row = zlib.compress(b"\x00" * 64)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", first_row)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose start-of-frame header is patched to declare width x height."""
    data = bytearray(encode(Image.new("L", (16, 16), 128), "JPEG"))
    frame = data.find(JPEG_START_OF_FRAME)
    assert frame >= 0, "baseline JPEG without SOF0"
    start = frame + JPEG_SOF_SIZE_OFFSET
    data[start : start + 4] = struct.pack(">HH", height, width)
    return bytes(data)


def centre_of_mass(pixels: npt.NDArray[Any]) -> tuple[float, float]:
    mass = pixels.astype(np.float64)
    total = mass.sum()
    rows = float(mass.sum(axis=1) @ np.arange(mass.shape[0])) / total
    columns = float(mass.sum(axis=0) @ np.arange(mass.shape[1])) / total
    return rows, columns


def correlation(left: npt.NDArray[Any], right: npt.NDArray[Any]) -> float:
    return float(
        np.corrcoef(left.ravel().astype(np.float64), right.ravel().astype(np.float64))[0, 1]
    )
