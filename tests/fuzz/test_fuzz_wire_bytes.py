"""Bytes that are not (or not quite) protobuf, sent to every inference method.

A request that does not parse must get INVALID_ARGUMENT (gRPC's own answer would be
UNKNOWN); bytes that happen to parse get one of the documented input statuses.
"""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from hypothesis import given
from hypothesis import strategies as st

from mnist_serving_proto import classifier_pb2
from mnist_serving_proto import open_inference_pb2 as pb
from tests.fuzz.conftest import FUZZ_SETTINGS
from tests.fuzz.wire import (
    CLASSIFY,
    CLASSIFY_STREAM,
    INPUT_OUTCOMES,
    MODEL_INFER,
    MODEL_STREAM_INFER,
    UNARY_METHODS,
    RawCaller,
)
from tests.integration.server.classify_support import raw_request
from tests.integration.v2.v2_helpers import raw_infer_request

MALFORMED_DETAILS = "not a valid protobuf message"
MAX_RANDOM_BYTES = 2048
MAX_IMAGES_PER_CASE = 4
MAX_MUTATIONS = 3
MAX_STREAM_ITEMS = 6
REQUEST_TYPES: dict[str, type[Message]] = {
    CLASSIFY: classifier_pb2.ClassifyRequest,
    CLASSIFY_STREAM: classifier_pb2.ClassifyRequest,
    MODEL_INFER: pb.ModelInferRequest,
    MODEL_STREAM_INFER: pb.ModelInferRequest,
}
Digits = tuple[Any, Any]


def parses(method: str, payload: bytes) -> bool:
    try:
        REQUEST_TYPES[method].FromString(payload)
    except DecodeError:
        return False
    return True


def valid_request(method: str, digits: np.ndarray) -> bytes:
    if method in (CLASSIFY, CLASSIFY_STREAM):
        return raw_request(digits).SerializeToString()
    return raw_infer_request(digits).SerializeToString()


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """`original` truncated, with bytes flipped, inserted or deleted."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, MAX_MUTATIONS))):
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        operation = draw(st.sampled_from(("truncate", "flip", "insert", "delete")))
        if operation == "truncate":
            del data[position:]
        elif operation == "flip" and data:
            data[position] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[position : position + draw(st.integers(1, 16))]
    return bytes(data)


def assert_answered(method: str, payload: bytes, code: grpc.StatusCode, details: str) -> None:
    if parses(method, payload):
        assert code in INPUT_OUTCOMES, (code, details)
    else:
        assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert MALFORMED_DETAILS in details


@FUZZ_SETTINGS
@given(method=st.sampled_from(UNARY_METHODS), payload=st.binary(max_size=MAX_RANDOM_BYTES))
def test_arbitrary_bytes_get_a_documented_status(
    caller: RawCaller, method: str, payload: bytes
) -> None:
    reply = caller.unary(method, payload)
    assert_answered(method, payload, reply.code, reply.details)


@FUZZ_SETTINGS
@given(
    method=st.sampled_from(UNARY_METHODS),
    first=st.integers(0, 999),
    count=st.integers(1, MAX_IMAGES_PER_CASE),
    data=st.data(),
)
def test_truncated_and_corrupted_requests_get_a_documented_status(
    caller: RawCaller,
    sample_digits: Digits,
    method: str,
    first: int,
    count: int,
    data: st.DataObject,
) -> None:
    payload = data.draw(mutated(valid_request(method, sample_digits[0][first : first + count])))
    reply = caller.unary(method, payload)
    assert_answered(method, payload, reply.code, reply.details)


@st.composite
def stream_items(draw: st.DrawFn, method: str, images: np.ndarray) -> list[bytes]:
    items = []
    for _ in range(draw(st.integers(1, MAX_STREAM_ITEMS))):
        first = draw(st.integers(0, len(images) - 1))
        valid = valid_request(method, images[first : first + 1])
        items.append(
            draw(
                st.one_of(
                    st.just(valid),
                    mutated(valid),
                    st.binary(max_size=MAX_RANDOM_BYTES),
                )
            )
        )
    return items


@FUZZ_SETTINGS
@given(method=st.sampled_from((CLASSIFY_STREAM, MODEL_STREAM_INFER)), data=st.data())
def test_streams_with_malformed_items_end_invalid_or_answer_each_item(
    caller: RawCaller, sample_digits: Digits, method: str, data: st.DataObject
) -> None:
    items = data.draw(stream_items(method, sample_digits[0]))
    reply = caller.stream(method, items)
    unparseable = [index for index, item in enumerate(items) if not parses(method, item)]
    if unparseable:
        # The call ends INVALID_ARGUMENT; no reply for the bad item or anything after it.
        assert reply.code is grpc.StatusCode.INVALID_ARGUMENT, (reply.code, reply.details)
        assert MALFORMED_DETAILS in reply.details
        assert len(reply.stream_payloads) <= unparseable[0]
        return
    assert reply.code is grpc.StatusCode.OK, (reply.code, reply.details)
    assert len(reply.stream_payloads) == len(items)
    for payload in reply.stream_payloads:
        assert_stream_reply_documented(method, payload)


def assert_stream_reply_documented(method: str, payload: bytes) -> None:
    """A per-item reply: predictions, or an input error (never INTERNAL/UNKNOWN)."""
    input_errors = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
    if method == CLASSIFY_STREAM:
        response = classifier_pb2.ClassifyResponse.FromString(payload)
        if response.HasField("error"):
            assert response.error.code in [code.value[0] for code in input_errors], response
        else:
            assert len(response.predictions) == 1
        return
    v2_response = pb.ModelStreamInferResponse.FromString(payload)
    if v2_response.error_message:
        assert v2_response.error_message.split(":")[0] in [c.name for c in input_errors]
    else:
        assert len(v2_response.infer_response.outputs) > 0
