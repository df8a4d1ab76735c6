"""KServe V2 ModelInfer with hostile tensors: shapes, datatypes, buffer lengths, NaN/inf.

The oracle is docs/v2_protocol.md: one input `pixels`, UINT8 (0-255) or FP32 (in [0,1]),
shape [N,1,28,28] or [N,28,28] with 1 <= N <= max_images_per_request, as typed contents or
one raw buffer of exactly the right length; anything else is INVALID_ARGUMENT.
"""

from __future__ import annotations

import struct

import grpc
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server.config import DEFAULT_MAX_IMAGES_PER_REQUEST
from tests.fuzz.conftest import FUZZ_SETTINGS
from tests.fuzz.wire import MODEL_INFER, RawCaller, Reply

INPUT_NAME = "pixels"
SIDE = 28
PIXELS = SIDE * SIDE
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT32_MAX = 2**32 - 1
MAX_IMAGES = DEFAULT_MAX_IMAGES_PER_REQUEST
MAX_DIMS = 6
MAX_EXACT_IMAGES = 4
MAX_RANDOM_BUFFER = 4 * PIXELS
MAX_ODD_VALUES = 8
V2_DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
    "BF16",
)
ITEM_BYTES = {"UINT8": 1, "FP32": 4}
ACCEPTED_SHAPE_TAILS = ((1, SIDE, SIDE), (SIDE, SIDE))


def infer(caller: RawCaller, request: pb.ModelInferRequest) -> Reply:
    return caller.unary(MODEL_INFER, request.SerializeToString())


def images_in(shape: list[int]) -> int | None:
    """N when the shape is one the server accepts, else None."""
    if tuple(shape[1:]) in ACCEPTED_SHAPE_TAILS and 1 <= shape[0] <= MAX_IMAGES:
        return shape[0]
    return None


def assert_served(reply: Reply, images: int) -> None:
    assert reply.code is grpc.StatusCode.OK, reply
    assert reply.payload is not None
    response = pb.ModelInferResponse.FromString(reply.payload)
    probabilities = next(o for o in response.outputs if o.name == "probabilities")
    assert list(probabilities.shape) == [images, 10]


def assert_invalid(reply: Reply) -> None:
    assert reply.code is grpc.StatusCode.INVALID_ARGUMENT, reply
    assert reply.details


dims = st.one_of(
    st.integers(-3, 3),
    st.sampled_from((1, SIDE, MAX_IMAGES, MAX_IMAGES + 1)),
    st.integers(INT64_MIN, INT64_MAX),
)


@FUZZ_SETTINGS
@given(
    shape=st.one_of(
        st.lists(dims, max_size=MAX_DIMS),
        st.tuples(st.integers(-2, MAX_EXACT_IMAGES), st.sampled_from(ACCEPTED_SHAPE_TAILS)).map(
            lambda parts: [parts[0], *parts[1]]
        ),
    ),
    exact_buffer=st.booleans(),
    buffer_size=st.integers(0, MAX_RANDOM_BUFFER),
)
def test_shapes_and_raw_buffer_lengths(
    caller: RawCaller, shape: list[int], exact_buffer: bool, buffer_size: int
) -> None:
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name=INPUT_NAME, datatype="UINT8", shape=shape)
    images = images_in(shape)
    if exact_buffer and images is not None and images <= MAX_EXACT_IMAGES:
        buffer_size = images * PIXELS
    if buffer_size:
        request.raw_input_contents.append(bytes(buffer_size))
    reply = infer(caller, request)
    if images is not None and buffer_size == images * PIXELS:
        assert_served(reply, images)
    else:
        assert_invalid(reply)


@FUZZ_SETTINGS
@given(
    datatype=st.one_of(st.sampled_from(V2_DATATYPES), st.text(max_size=8)),
    item_bytes=st.sampled_from((1, 2, 4, 8)),
    extra_bytes=st.one_of(st.just(0), st.integers(-PIXELS, PIXELS)),
)
def test_datatypes_and_buffer_sizes(
    caller: RawCaller, datatype: str, item_bytes: int, extra_bytes: int
) -> None:
    size = max(PIXELS * item_bytes + extra_bytes, 0)
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name=INPUT_NAME, datatype=datatype, shape=[1, 1, SIDE, SIDE])
    request.raw_input_contents.append(bytes(size))  # zeros: a valid pixel in both types
    reply = infer(caller, request)
    if datatype in ITEM_BYTES and size == PIXELS * ITEM_BYTES[datatype]:
        assert_served(reply, 1)
    else:
        assert_invalid(reply)


odd_floats = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)


@FUZZ_SETTINGS
@given(
    odd=st.lists(st.tuples(st.integers(0, PIXELS - 1), odd_floats), max_size=MAX_ODD_VALUES),
    raw=st.booleans(),
    seed=st.integers(0, UINT32_MAX),
)
def test_fp32_nan_inf_and_out_of_range_pixels(
    caller: RawCaller, odd: list[tuple[int, float]], raw: bool, seed: int
) -> None:
    values = np.random.default_rng(seed).random(PIXELS, dtype=np.float32)
    for index, value in odd:
        values[index] = value
    request = pb.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name=INPUT_NAME, datatype="FP32", shape=[1, SIDE, SIDE])
    if raw:
        request.raw_input_contents.append(values.astype("<f4").tobytes())
    else:
        tensor.contents.fp32_contents.extend(values.tolist())
    reply = infer(caller, request)
    with np.errstate(invalid="ignore"):
        in_range = bool(((values >= 0) & (values <= 1)).all())
    if in_range:
        assert_served(reply, 1)
    else:
        assert_invalid(reply)
        assert "FP32 values must be finite and in [0,1]" in reply.details


@FUZZ_SETTINGS
@given(
    odd=st.lists(
        st.tuples(st.integers(0, PIXELS - 1), st.integers(0, UINT32_MAX)), max_size=MAX_ODD_VALUES
    )
)
def test_typed_uint8_values_above_255(caller: RawCaller, odd: list[tuple[int, int]]) -> None:
    values = [0] * PIXELS
    for index, value in odd:
        values[index] = value
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name=INPUT_NAME, datatype="UINT8", shape=[1, 1, SIDE, SIDE])
    request.inputs[0].contents.uint_contents.extend(values)
    reply = infer(caller, request)
    if max(values) <= np.iinfo(np.uint8).max:
        assert_served(reply, 1)
    else:
        assert_invalid(reply)


names = st.one_of(st.just(""), st.just("mnist"), st.text(max_size=8))
parameter_values = st.one_of(
    st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(INT64_MIN, INT64_MAX)),
    st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: pb.InferParameter(string_param=v), st.text(max_size=8)),
)


@FUZZ_SETTINGS
@given(
    model_name=names,
    model_version=st.one_of(st.just(""), st.just("1"), st.text(max_size=8)),
    input_names=st.lists(st.one_of(st.just(INPUT_NAME), st.text(max_size=8)), max_size=3),
    outputs=st.lists(
        st.one_of(st.sampled_from(("probabilities", "logits")), st.text(max_size=8)), max_size=3
    ),
    timeout=st.one_of(st.none(), parameter_values),
)
def test_request_fields_get_a_documented_status(
    caller: RawCaller,
    model_name: str,
    model_version: str,
    input_names: list[str],
    outputs: list[str],
    timeout: pb.InferParameter | None,
) -> None:
    request = pb.ModelInferRequest(model_name=model_name, model_version=model_version)
    for name in input_names:
        request.inputs.add(name=name, datatype="UINT8", shape=[1, 1, SIDE, SIDE])
        request.raw_input_contents.append(bytes(PIXELS))
    for name in outputs:
        request.outputs.add(name=name)
    if timeout is not None:
        request.parameters["timeout"].CopyFrom(timeout)
    reply = infer(caller, request)
    documented = {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        # A timeout parameter of a few microseconds may pass before the batch runs.
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
    assert reply.code in documented, reply
    if model_name not in ("", "mnist") or model_version not in ("", "1"):
        assert reply.code is grpc.StatusCode.NOT_FOUND, reply
    elif input_names != [INPUT_NAME]:
        assert reply.code is grpc.StatusCode.INVALID_ARGUMENT, reply


def test_timeout_parameter_of_wrong_kind_is_invalid(caller: RawCaller) -> None:
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name=INPUT_NAME, datatype="UINT8", shape=[1, SIDE, SIDE])
    request.raw_input_contents.append(bytes(PIXELS))
    request.parameters["timeout"].CopyFrom(pb.InferParameter(string_param="1s"))
    reply = infer(caller, request)
    assert_invalid(reply)
    assert "timeout" in reply.details


# A float32 bit pattern that is a signalling NaN: it must not slip through a conversion.
SIGNALLING_NAN = struct.unpack("<f", struct.pack("<I", 0x7FA00000))[0]


def test_signalling_nan_in_a_raw_buffer_is_invalid(caller: RawCaller) -> None:
    values = np.zeros(PIXELS, dtype="<f4")
    values.view("<u4")[PIXELS // 2] = 0x7FA00000
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name=INPUT_NAME, datatype="FP32", shape=[1, 1, SIDE, SIDE])
    request.raw_input_contents.append(values.tobytes())
    assert np.isnan(SIGNALLING_NAN)
    assert_invalid(infer(caller, request))
