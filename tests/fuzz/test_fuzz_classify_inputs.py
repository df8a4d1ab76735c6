"""Classify with well-formed protobuf but hostile content: sizes, images, names, top_k.

Each case is checked against an oracle built from the documented rules (docs/
architecture.md, the error table in grpc_errors.py): what must be served, and what must be refused
with which status.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnist_serving_proto import classifier_pb2
from mnist_serving_server.core.images import DEFAULT_MAX_DECODED_PIXELS
from tests.fuzz.conftest import FUZZ_SETTINGS
from tests.fuzz.hostile_images import encode, jpeg_declaring, png_bomb, png_declaring
from tests.fuzz.threaded_server import ThreadedServer
from tests.fuzz.wire import CLASSIFY, RawCaller

# Pillow warns (then our own limit refuses) for headers declaring > 89 M pixels: expected.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

IMAGE_BYTES = 28 * 28
CLASS_COUNT = 10
UINT32_MAX = 2**32 - 1
UINT16_MAX = 2**16 - 1
MAX_IMAGES_PER_CASE = 4
MAX_PICTURE_SIDE = 64
MAX_NAME_CHARS = 12
# Documented defaults the oracle relies on (the fuzz server runs with the defaults).
MAX_DECODED_PIXELS = DEFAULT_MAX_DECODED_PIXELS
# The smallest square side whose pixel count is over the decode limit: a bomb just past it.
BOMB_SIDE_OVER_LIMIT = int(MAX_DECODED_PIXELS**0.5) + 1


def classify(caller: RawCaller, request: classifier_pb2.ClassifyRequest) -> tuple[Any, Any]:
    reply = caller.unary(CLASSIFY, request.SerializeToString())
    response = (
        None if reply.payload is None else classifier_pb2.ClassifyResponse.FromString(reply.payload)
    )
    return reply, response


# --- hostile images ---------------------------------------------------------------------


@st.composite
def pictures(draw: st.DrawFn) -> np.ndarray:
    height = draw(st.integers(1, MAX_PICTURE_SIDE))
    width = draw(st.integers(1, MAX_PICTURE_SIDE))
    seed = draw(st.integers(0, UINT32_MAX))
    return np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)


@st.composite
def hostile_images(draw: st.DrawFn) -> tuple[bytes, int | None]:
    """(image bytes, pixels its header declares, or None when the header may not parse)."""
    kind = draw(st.sampled_from(("png-lies", "jpeg-lies", "truncated", "garbage-after-magic")))
    if kind == "png-lies":
        width = draw(st.one_of(st.integers(0, 4096), st.integers(0, UINT32_MAX)))
        height = draw(st.one_of(st.integers(0, 4096), st.integers(0, UINT32_MAX)))
        idat = draw(st.binary(max_size=256))
        return png_declaring(width, height, idat), None
    if kind == "jpeg-lies":
        width = draw(st.integers(0, UINT16_MAX))
        height = draw(st.integers(0, UINT16_MAX))
        return jpeg_declaring(encode(draw(pictures()), "JPEG"), width, height), width * height
    if kind == "truncated":
        image = encode(draw(pictures()), draw(st.sampled_from(("PNG", "JPEG"))))
        return image[: draw(st.integers(0, len(image)))], None
    magic = draw(st.sampled_from((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM")))
    return magic + draw(st.binary(max_size=512)), None


@FUZZ_SETTINGS
@given(image=hostile_images())
def test_hostile_images_are_refused_or_served_never_internal(
    caller: RawCaller, image: tuple[bytes, int | None]
) -> None:
    data, declared_pixels = image
    request = classifier_pb2.ClassifyRequest(images=[classifier_pb2.Image(encoded=data)])
    reply, response = classify(caller, request)
    assert reply.code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), reply
    if declared_pixels is not None and (
        declared_pixels > MAX_DECODED_PIXELS or not declared_pixels
    ):
        assert reply.code is grpc.StatusCode.INVALID_ARGUMENT, reply
    if reply.code is grpc.StatusCode.OK:
        assert len(response.predictions) == 1
    else:
        assert reply.details.startswith("images[0].encoded: ")


def test_decompression_bomb_over_the_limit_is_refused_before_decoding(caller: RawCaller) -> None:
    bomb = png_bomb(BOMB_SIDE_OVER_LIMIT)
    request = classifier_pb2.ClassifyRequest(images=[classifier_pb2.Image(encoded=bomb)])
    reply, _ = classify(caller, request)
    assert reply.code is grpc.StatusCode.INVALID_ARGUMENT
    assert f"more than the {MAX_DECODED_PIXELS}" in reply.details


# --- structured requests ----------------------------------------------------------------

RAW = "raw"
WRONG_SIZE = "wrong-size"
ENCODED = "encoded"
EMPTY = "empty"


@st.composite
def images(draw: st.DrawFn) -> tuple[str, classifier_pb2.Image]:
    kind = draw(st.sampled_from((RAW, WRONG_SIZE, ENCODED, EMPTY)))
    if kind == RAW:
        pixels = draw(st.binary(min_size=IMAGE_BYTES, max_size=IMAGE_BYTES))
        return kind, classifier_pb2.Image(pixels=pixels)
    if kind == WRONG_SIZE:
        size = draw(st.integers(0, 2 * IMAGE_BYTES).filter(lambda n: n != IMAGE_BYTES))
        return kind, classifier_pb2.Image(pixels=bytes(size))
    if kind == ENCODED:
        return kind, classifier_pb2.Image(encoded=draw(hostile_images())[0])
    return kind, classifier_pb2.Image()


names = st.one_of(st.just(""), st.just("mnist"), st.text(max_size=MAX_NAME_CHARS))
versions = st.one_of(st.just(""), st.just("1"), st.text(max_size=MAX_NAME_CHARS))


@FUZZ_SETTINGS
@given(
    parts=st.lists(images(), max_size=MAX_IMAGES_PER_CASE),
    top_k=st.one_of(st.integers(0, CLASS_COUNT + 1), st.integers(0, UINT32_MAX)),
    model_name=names,
    model_version=versions,
    request_id=st.text(max_size=MAX_NAME_CHARS),
)
def test_classify_requests_get_the_documented_status(
    caller: RawCaller,
    fuzz_server: ThreadedServer,
    parts: list[tuple[str, classifier_pb2.Image]],
    top_k: int,
    model_name: str,
    model_version: str,
    request_id: str,
) -> None:
    request = classifier_pb2.ClassifyRequest(
        images=[image for _, image in parts],
        top_k=top_k,
        model_name=model_name,
        model_version=model_version,
        request_id=request_id,
    )
    reply, response = classify(caller, request)
    kinds = {kind for kind, _ in parts}
    info = fuzz_server.app.dataplane.model("", "").info
    if model_name not in ("", info.name) or model_version not in ("", info.version):
        assert reply.code is grpc.StatusCode.NOT_FOUND, reply
    elif top_k > CLASS_COUNT or not parts or kinds & {WRONG_SIZE, EMPTY}:
        assert reply.code is grpc.StatusCode.INVALID_ARGUMENT, reply
    elif kinds == {RAW}:
        assert reply.code is grpc.StatusCode.OK, reply
    else:
        assert reply.code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), reply
    if reply.code is grpc.StatusCode.OK:
        assert len(response.predictions) == len(parts)
        assert response.request_id == request_id
        assert all(len(p.top_k) == top_k for p in response.predictions)
