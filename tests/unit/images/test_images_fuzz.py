"""Fuzz: whatever bytes arrive, the result is a [28, 28] uint8 digit or InvalidInputError."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.images import MNIST_SIDE, decode_image
from tests.unit.images.encoded_images import encode

FUZZ_EXAMPLES = 200
# A small limit keeps every accepted mutation cheap to decode on a shared 2-core machine.
FUZZ_MAX_PIXELS = 256 * 256
SEED_SIDE = 24
_PIXELS = np.random.default_rng(2).integers(0, 256, (SEED_SIDE, SEED_SIDE, 3), dtype=np.uint8)
SEED_FILES = (
    encode(Image.fromarray(_PIXELS), "PNG"),
    encode(Image.fromarray(_PIXELS).convert("L"), "PNG"),
    encode(Image.fromarray(_PIXELS).convert("P"), "PNG", transparency=0),
    encode(Image.fromarray(_PIXELS), "JPEG"),
    encode(Image.fromarray(_PIXELS).convert("L"), "JPEG", progressive=True),
)

FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,  # the machine is shared and noisy; no timing in tests
    suppress_health_check=[HealthCheck.too_slow],
)


def _assert_digit_or_invalid(data: bytes) -> None:
    try:
        result = decode_image(data, max_pixels=FUZZ_MAX_PIXELS)
    except InvalidInputError as error:
        message = str(error)
    else:
        assert result.shape == (MNIST_SIDE, MNIST_SIDE)
        assert result.dtype == np.uint8
        return
    # Every refusal tells the caller what to send instead.
    assert "send" in message


@FUZZ_SETTINGS
@given(st.binary(max_size=2_048))
def test_random_bytes(data: bytes) -> None:
    _assert_digit_or_invalid(data)


@FUZZ_SETTINGS
@given(st.sampled_from(SEED_FILES), st.floats(min_value=0.0, max_value=1.0))
def test_truncated_files(seed_file: bytes, keep: float) -> None:
    _assert_digit_or_invalid(seed_file[: int(len(seed_file) * keep)])


@FUZZ_SETTINGS
@given(
    st.sampled_from(SEED_FILES),
    st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=8),
)
def test_files_with_overwritten_bytes(seed_file: bytes, edits: list[tuple[float, int]]) -> None:
    mutated = bytearray(seed_file)
    for position, value in edits:
        mutated[int(position * len(mutated))] = value
    _assert_digit_or_invalid(bytes(mutated))
