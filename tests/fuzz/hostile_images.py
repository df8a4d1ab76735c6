"""PNG and JPEG files that lie: declared sizes far beyond their data, truncations, bombs.

Built byte by byte (PNG chunks with correct CRCs, JPEG frame headers patched in place), so
the server's parsers see exactly the hostile header the test means, not what Pillow would
write.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image as PilImage

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_GREY = 0
PNG_BIT_DEPTH = 8
PNG_FILTER_NONE = b"\x00"
# JPEG start-of-frame markers (baseline, extended, progressive): where the size is declared.
JPEG_SOF_MARKERS = (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2")
# In a SOF segment: marker (2), length (2), precision (1), then height (2) and width (2).
JPEG_SOF_HEIGHT_OFFSET = 5
JPEG_QUALITY = 90
# Rows compressed per zlib call when building a bomb: keeps the builder's memory small.
BOMB_ROWS_PER_CHUNK = 256


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_header(width: int, height: int) -> bytes:
    """IHDR for an 8-bit grey image of the declared size (any uint32 values)."""
    return png_chunk(
        b"IHDR", struct.pack(">IIBBBBB", width, height, PNG_BIT_DEPTH, PNG_GREY, 0, 0, 0)
    )


def png_declaring(width: int, height: int, idat: bytes) -> bytes:
    """A PNG whose header declares width x height, whatever `idat` really holds."""
    return (
        PNG_SIGNATURE
        + png_header(width, height)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def png_bomb(side: int) -> bytes:
    """A real decompression bomb: a side x side black PNG, all of its data present (~side²/1000
    bytes), built in chunks so the builder never holds side² bytes."""
    compressor = zlib.compressobj(level=9)
    row = PNG_FILTER_NONE + bytes(side)
    parts = []
    for start in range(0, side, BOMB_ROWS_PER_CHUNK):
        rows = min(BOMB_ROWS_PER_CHUNK, side - start)
        parts.append(compressor.compress(row * rows))
    parts.append(compressor.flush())
    return png_declaring(side, side, b"".join(parts))


def encode(digit: np.ndarray, image_format: str) -> bytes:
    """A genuine PNG or JPEG of a uint8 [h,w] picture."""
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if image_format == "JPEG" else {}
    PilImage.fromarray(digit.astype(np.uint8), mode="L").save(
        buffer, format=image_format, **options
    )
    return buffer.getvalue()


def jpeg_declaring(jpeg: bytes, width: int, height: int) -> bytes:
    """`jpeg` with its frame header patched to declare width x height (each 0-65535)."""
    for marker in JPEG_SOF_MARKERS:
        at = jpeg.find(marker)
        if at >= 0:
            offset = at + JPEG_SOF_HEIGHT_OFFSET
            return jpeg[:offset] + struct.pack(">HH", height, width) + jpeg[offset + 4 :]
    raise ValueError("no start-of-frame marker in the JPEG")
