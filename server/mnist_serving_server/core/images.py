"""PNG/JPEG bytes -> a 28x28 uint8 digit, white on black, the way MNIST was made.

docs/preprocessing.md describes every step and why; this module implements exactly that.
Two parts:

- the photometric part (:func:`decode_image`, :func:`to_white_on_black`): decode only PNG
  or JPEG, refuse image bombs before decoding, turn the picture upright by its EXIF
  orientation, reduce any mode (palette, 16-bit, RGB, CMYK, alpha...) to 8-bit grey, make
  the digit white on black and stretch it so the background is 0 and the ink peaks at 255;
- the geometric part (:func:`to_mnist_digit`): crop to the ink, scale the larger side to
  20 px keeping the aspect ratio, and paste into 28x28 with the centre of mass at the
  centre.

It runs on the request path, so it works on uint8 arrays with lookup tables and lets
libjpeg decode large JPEGs at a reduced scale. It never imports grpc: errors are
:class:`~mnist_serving_server.core.errors.InvalidInputError` with a message for the caller.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from mnist_serving_server.core.errors import InvalidInputError

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_MAX_DECODED_PIXELS",
    "DIGIT_BOX_SIDE",
    "INK_THRESHOLD",
    "MIN_INK_CONTRAST",
    "MNIST_SIDE",
    "decode_image",
    "to_mnist_digit",
    "to_white_on_black",
]

Uint8Array = npt.NDArray[np.uint8]

# Largest width x height decoded (16 Mi pixels: a 4096x4096 photo). Checked against the
# size the header declares, before any pixel is decoded.
DEFAULT_MAX_DECODED_PIXELS: Final = 16 * 1024 * 1024

# Side of the output frame and of the box the digit's larger side is scaled to (MNIST:
# "size normalized to fit in a 20x20 pixel box ... centered in a 28x28 image").
MNIST_SIDE: Final = 28
MNIST_SIZE: Final = (MNIST_SIDE, MNIST_SIDE)
DIGIT_BOX_SIDE: Final = 20

# Where the centre of mass lands, in pixel-index coordinates (row, column). Measured on
# the real digits: their mean centre of mass is (13.99, 14.00) with a spread of 0.28 px,
# which is an integer shift that put the centre of mass at index 14.
CENTRE_OF_MASS_INDEX: Final = 14.0

# After the photometric step a pixel brighter than this (of 255) is ink when finding the
# bounding box. Real MNIST digits keep their 20-px box at this threshold, while JPEG noise
# and faint halos around a blurred stroke stay below it.
INK_THRESHOLD: Final = 32

# Fewer grey levels than this between the background and the brightest pixel means there
# is no digit (a blank page, a flat colour, JPEG noise): the result is all zeros.
MIN_INK_CONTRAST: Final = 16

# Background noise (paper grain, sensor noise, JPEG ringing) is measured on the border as
# a robust standard deviation (median absolute deviation x 1.4826, exact for Gaussian
# noise); levels up to this many deviations above the background median become black, so
# noise neither survives as faint ink nor widens the digit's bounding box. A clean image
# (an MNIST digit: border all 0) has no deviation and keeps every level.
MAD_TO_SIGMA: Final = 1.4826
NOISE_SIGMAS: Final = 5.0

MAX_GREY: Final = 255
MID_GREY: Final = MAX_GREY / 2
SIXTEEN_BIT_MAX: Final = 65535

# Pillow's names for what we accept; only these parsers ever see the bytes. (Pillow's JPEG
# opener reports a camera's multi-picture JPEG as "MPO"; its first frame is used.)
ACCEPTED_FORMATS: Final = ("PNG", "JPEG")
_ACCEPTED_TEXT: Final = "PNG or JPEG"

# Pillow modes holding 16-bit (or wider) grey values: a 16-bit grey PNG.
_WIDE_GREY_MODES: Final = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

# A large JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale, but never below this many
# pixels on either side: the digit still spans many more pixels than the 20 px it becomes.
JPEG_DRAFT_MIN_SIDE: Final = 256

# Pillow's resize first reduces by an integer factor while the image is this many times
# larger than the target, then resamples: its documentation calls 3.0 indistinguishable
# from a full Lanczos resample, and it is much cheaper on large crops.
RESIZE_REDUCING_GAP: Final = 3.0

# EXIF orientation 1: the stored pixels are already upright.
EXIF_UPRIGHT: Final = 1

# Signatures of formats we refuse, so the error can name what was sent. Only PNG and JPEG
# ever reach Pillow's parsers (Image.open is given formats=...); this table only names.
_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE: Final = b"\xff\xd8\xff"
_FORMAT_SIGNATURES: Final[tuple[tuple[int, bytes, str], ...]] = (
    (0, _PNG_SIGNATURE, "PNG"),
    (0, _JPEG_SIGNATURE, "JPEG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (8, b"WEBP", "WebP"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"qoif", "QOI"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
)

# What a corrupt or truncated PNG/JPEG makes Pillow raise while reading it.
_DECODE_ERRORS: Final = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def _detected_format(data: bytes) -> str | None:
    for offset, signature, name in _FORMAT_SIGNATURES:
        if data[offset : offset + len(signature)] == signature:
            return name
    return None


def _too_large(width: int, height: int, max_pixels: int) -> InvalidInputError:
    return InvalidInputError(
        f"image is {width}x{height} = {width * height} pixels, more than the "
        f"{max_pixels} this server decodes; send a smaller image (a digit needs no more "
        f"than a few hundred pixels a side)"
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only (Pillow is lazy) and check the declared size."""
    try:
        image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except UnidentifiedImageError:
        detected = _detected_format(data)
        if detected in ACCEPTED_FORMATS:
            raise InvalidInputError(
                f"image looks like {detected} but its header could not be read: "
                f"the file is corrupt or truncated; send a complete {_ACCEPTED_TEXT} file"
            ) from None
        what = f"{detected} data" if detected else "unrecognised data (not an image format)"
        raise InvalidInputError(
            f"image format not accepted: got {what}; send {_ACCEPTED_TEXT} bytes"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # Pillow's own guard fires in Image.open for sizes far beyond its limit; it is a
        # second line of defence behind ours, and nothing has been decoded.
        raise InvalidInputError(
            f"image declares too many pixels ({error}); this server decodes at most "
            f"{max_pixels} pixels; send a smaller image"
        ) from None
    except _DECODE_ERRORS as error:
        detected = _detected_format(data) or "image"
        raise InvalidInputError(
            f"{detected} header could not be decoded ({error}): the file is corrupt or "
            f"truncated; send a complete {_ACCEPTED_TEXT} file"
        ) from None
    width, height = image.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        image.close()
        if width <= 0 or height <= 0:
            raise InvalidInputError(
                f"image is {width}x{height}: it has no pixels; send a {_ACCEPTED_TEXT} "
                f"image of the digit"
            )
        raise _too_large(width, height, max_pixels)
    return image


def _load(image: Image.Image) -> None:
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        # Let libjpeg decode grey (the Y channel) at a reduced scale when the image is
        # large: less memory and time, and the digit ends up 20 px anyway.
        image.draft("L", (JPEG_DRAFT_MIN_SIDE, JPEG_DRAFT_MIN_SIDE))
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidInputError(
            f"image declares too many pixels ({error}); send a smaller image"
        ) from None
    except _DECODE_ERRORS as error:
        raise InvalidInputError(
            f"{image.format} image could not be decoded ({error}): it is corrupt or "
            f"truncated; send a complete {_ACCEPTED_TEXT} file"
        ) from None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation a phone camera writes instead of rotating the pixels."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, EXIF_UPRIGHT)
    except _DECODE_ERRORS:
        # Unreadable EXIF is metadata damage, not a bad picture: use the pixels as stored.
        return image
    if orientation == EXIF_UPRIGHT:
        return image
    return ImageOps.exif_transpose(image)


def _composite_alpha(grey: Uint8Array, alpha: Uint8Array) -> Uint8Array:
    """Flatten grey+alpha onto the background that contrasts with the visible ink.

    A digit drawn on a transparent canvas has its ink in the opaque pixels; whether that
    ink is dark (composite on white) or light (composite on black) is read from the
    alpha-weighted mean grey of the image.
    """
    weight = alpha.astype(np.float32) / MAX_GREY
    total_weight = float(weight.sum())
    if total_weight == 0.0:
        return np.zeros_like(grey)
    ink_mean = float((grey * weight).sum()) / total_weight
    background = MAX_GREY if ink_mean < MID_GREY else 0
    flat = grey * weight + background * (1.0 - weight)
    return np.rint(flat).astype(np.uint8)


def _to_grey(image: Image.Image) -> Uint8Array:
    """Any PNG/JPEG mode -> 8-bit grey (ITU-R 601 luma, as Pillow's convert("L"))."""
    if image.mode in _WIDE_GREY_MODES:
        # 16-bit grey: scale 0..65535 to 0..255 (a tRNS colour key is ignored here).
        wide = np.clip(np.asarray(image, dtype=np.float32), 0, SIXTEEN_BIT_MAX)
        narrowed: Uint8Array = np.rint(wide * (MAX_GREY / SIXTEEN_BIT_MAX)).astype(np.uint8)
        return narrowed
    if image.has_transparency_data:
        # Palettes with transparent entries, tRNS colour keys and alpha channels all
        # become RGBA first, then grey + alpha.
        grey_alpha = np.asarray(image.convert("RGBA").convert("LA"))
        return _composite_alpha(grey_alpha[..., 0], grey_alpha[..., 1])
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def _median(values: npt.NDArray[np.float32]) -> float:
    """np.median without its per-call overhead (this runs on every request)."""
    count = values.size
    lower, upper = (count - 1) // 2, count // 2
    ordered = np.partition(values, (lower, upper))
    return float(ordered[lower] + ordered[upper]) / 2


def to_white_on_black(grey: Uint8Array) -> Uint8Array:
    """Make the digit white on a black background, background 0 and brightest ink 255.

    The background is the median of the one-pixel border. When it is brighter than the
    middle of the image's range the image is dark-on-light and is inverted. Then levels
    are stretched linearly so the background maps to 0 and the brightest pixel to 255
    (darker-than-background pixels clip to 0). With less than ``MIN_INK_CONTRAST`` grey
    levels between them there is no digit and the result is all zeros.
    """
    if grey.ndim != 2 or grey.dtype != np.uint8 or grey.size == 0:
        raise ValueError(f"expected a non-empty 2-D uint8 array, got {grey.dtype} {grey.shape}")
    border = np.concatenate((grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1])).astype(np.float32)
    background = _median(border)
    noise_sigma = MAD_TO_SIGMA * _median(np.abs(border - background))
    darkest, brightest = int(grey.min()), int(grey.max())
    inverted = background > (darkest + brightest) / 2
    if inverted:
        background = MAX_GREY - background
        ink = MAX_GREY - darkest
    else:
        ink = brightest
    black_point = background + NOISE_SIGMAS * noise_sigma
    contrast = ink - black_point
    if contrast < MIN_INK_CONTRAST:
        return np.zeros_like(grey)
    # One 256-entry lookup table does inversion and stretch in a single uint8 pass.
    levels = np.arange(MAX_GREY + 1, dtype=np.float32)
    if inverted:
        levels = MAX_GREY - levels
    table = np.rint(np.clip((levels - black_point) * (MAX_GREY / contrast), 0, MAX_GREY))
    result: Uint8Array = table.astype(np.uint8)[grey]
    return result


def to_mnist_digit(grey: Uint8Array) -> Uint8Array:
    """The geometric part: white-on-black uint8 of any size -> uint8 [28, 28].

    Crop to the bounding box of the pixels brighter than ``INK_THRESHOLD``; scale it so
    the larger side is ``DIGIT_BOX_SIDE`` (20) px, keeping the aspect ratio (Lanczos,
    anti-aliased; a box already 20 px is left untouched); paste it into a black 28x28
    frame shifted by whole pixels so its centre of mass lands on index (14, 14), moved
    back just enough to keep the whole digit in the frame. No ink -> all zeros.
    """
    if grey.ndim != 2 or grey.dtype != np.uint8 or grey.size == 0:
        raise ValueError(f"expected a non-empty 2-D uint8 array, got {grey.dtype} {grey.shape}")
    frame = np.zeros((MNIST_SIDE, MNIST_SIDE), dtype=np.uint8)
    ink = grey > INK_THRESHOLD
    rows = np.flatnonzero(ink.any(axis=1))
    if rows.size == 0:
        return frame
    columns = np.flatnonzero(ink.any(axis=0))
    digit = grey[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]

    height, width = digit.shape
    scale = DIGIT_BOX_SIDE / max(height, width)
    new_height = max(1, round(height * scale))
    new_width = max(1, round(width * scale))
    if (new_height, new_width) != (height, width):
        resized = Image.fromarray(np.ascontiguousarray(digit)).resize(
            (new_width, new_height),
            Image.Resampling.LANCZOS,
            reducing_gap=RESIZE_REDUCING_GAP,
        )
        digit = np.asarray(resized, dtype=np.uint8)

    mass = digit.astype(np.float64)
    total = float(mass.sum())
    if total == 0.0:
        return frame
    centre_row = float(mass.sum(axis=1) @ np.arange(new_height)) / total
    centre_column = float(mass.sum(axis=0) @ np.arange(new_width)) / total
    top = _clamped_offset(CENTRE_OF_MASS_INDEX - centre_row, new_height)
    left = _clamped_offset(CENTRE_OF_MASS_INDEX - centre_column, new_width)
    frame[top : top + new_height, left : left + new_width] = digit
    return frame


def _clamped_offset(ideal: float, extent: int) -> int:
    """Round half up to a whole pixel, then keep [offset, offset + extent) inside the frame."""
    return min(max(math.floor(ideal + 0.5), 0), MNIST_SIDE - extent)


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
    size: Sequence[int] = MNIST_SIZE,
) -> Uint8Array:
    """PNG or JPEG bytes of any size -> uint8 [28, 28], white digit on black, as MNIST.

    Raises InvalidInputError, with a message saying what to fix, for empty data, formats
    other than PNG/JPEG, corrupt or truncated files, and images whose declared
    width x height exceeds ``max_pixels`` (checked before decoding). An image with no
    ink (one flat colour) is valid and gives all zeros, like a blank raw-pixel image.
    `size` is the (height, width) the model takes: this preparation makes MNIST's 28x28
    only, so another size is refused (send raw pixels for such a model).
    """
    if tuple(size) != MNIST_SIZE:
        raise InvalidInputError(
            f"encoded images are prepared as MNIST digits ({MNIST_SIDE}x{MNIST_SIDE}); this "
            f"model takes {'x'.join(str(d) for d in size)} images: send raw pixels instead"
        )
    if not data:
        raise InvalidInputError(f"image is empty (0 bytes); send {_ACCEPTED_TEXT} bytes")
    image = _open(data, max_pixels)
    with image:
        _load(image)
        grey = _to_grey(_upright(image))
    return to_mnist_digit(to_white_on_black(grey))
