"""The KServe V2 protobuf codec and the core's conversion behind it: decoding pixels,
encoding outputs, the timeout parameter."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server.core import inference
from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.images import DEFAULT_MAX_DECODED_PIXELS
from mnist_serving_server.core.inference import InferenceResponse, RequestLimits
from mnist_serving_server.core.runtime import TensorSpec
from mnist_serving_server.core.tensors import RequestedOutput
from mnist_serving_server.grpc_api.v2_tensors import (
    core_request,
    grpc_response,
    grpc_response_bytes,
)

INPUT = "pixels"
SPEC = TensorSpec(
    name=INPUT, datatype="UINT8", numpy_dtype=np.dtype(np.uint8), shape=(-1, 1, 28, 28)
)
EXPECTED_INPUT = "UINT8 [N,1,28,28] (or FP32 in [0,1], value/255)"
MAX_IMAGES = 64
MODEL_OUTPUTS = ("probabilities", "logits")
SEED = 1234


def decode_input(
    request: pb.ModelInferRequest, spec: TensorSpec, *, max_rows: int
) -> SimpleNamespace:
    """The protobuf front's parse, then the core's conversion, as ModelInfer runs them."""
    core, raw = core_request(request)
    if core.invalid is not None:  # raised by the core once the model is resolved
        raise core.invalid
    limits = RequestLimits(max_rows, DEFAULT_MAX_DECODED_PIXELS)
    return SimpleNamespace(array=inference.decode_input(core.input, spec, limits), raw=raw)


def with_input(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.inputs.add(name=INPUT, datatype="UINT8", shape=[1, 28, 28])
    return request


def select_outputs(request: pb.ModelInferRequest, outputs: tuple[str, ...]):
    core, _ = core_request(with_input(request))
    if core.invalid is not None:
        raise core.invalid
    return inference.select_outputs(core, outputs)


def queue_timeout_s(request: pb.ModelInferRequest) -> float | None:
    probe = pb.ModelInferRequest()
    probe.CopyFrom(request)
    core, _ = core_request(with_input(probe))
    if core.invalid is not None:
        raise core.invalid
    return inference.queue_timeout_s(core)


def encode_outputs(
    response: pb.ModelInferResponse, outputs: dict[str, np.ndarray], *, raw: bool
) -> None:
    core = InferenceResponse("m", "1", "", inference.encode_outputs(outputs, None, ()))
    response.CopyFrom(grpc_response(core, raw=raw))


def random_images(count: int, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)


def raw_request(data: np.ndarray, datatype: str, shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name=INPUT, datatype=datatype, shape=shape)
    request.raw_input_contents.append(data.tobytes())
    return request


def typed_request(data: np.ndarray, datatype: str, shape: list[int]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name=INPUT, datatype=datatype, shape=shape)
    field = "uint_contents" if datatype == "UINT8" else "fp32_contents"
    getattr(tensor.contents, field).extend(data.ravel().tolist())
    return request


def decode(request: pb.ModelInferRequest, max_images: int = MAX_IMAGES) -> np.ndarray:
    array: np.ndarray = decode_input(request, SPEC, max_rows=max_images).array
    return array


def decode_error(request: pb.ModelInferRequest, max_images: int = MAX_IMAGES) -> str:
    with pytest.raises(InvalidInputError) as caught:
        decode_input(request, SPEC, max_rows=max_images)
    return str(caught.value)


# --- decoding: datatypes, shapes, raw and typed ------------------------------------------


@pytest.mark.parametrize("shape_tail", [[1, 28, 28], [28, 28]])
@pytest.mark.parametrize("encoding", ["raw", "typed"])
def test_uint8_decodes_to_the_same_pixels(shape_tail: list[int], encoding: str) -> None:
    images = random_images(3)
    build = raw_request if encoding == "raw" else typed_request
    decoded = decode_input(build(images, "UINT8", [3, *shape_tail]), SPEC, max_rows=MAX_IMAGES)
    assert decoded.array.dtype == np.uint8
    assert decoded.array.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(decoded.array[:, 0], images)
    assert decoded.raw is (encoding == "raw")


def test_raw_uint8_is_a_view_of_the_request_bytes() -> None:
    request = raw_request(random_images(2), "UINT8", [2, 28, 28])
    pixels = decode(request)
    # No copy: the array reads the message's buffer and so is read-only.
    assert not pixels.flags.writeable
    assert not pixels.flags.owndata


@pytest.mark.parametrize("encoding", ["raw", "typed"])
def test_fp32_k_over_255_equals_uint8_exactly_for_every_pixel_value(encoding: str) -> None:
    # Every pixel value 0..255, as torchvision ToTensor produces it (float32 division).
    every_value = np.arange(256, dtype=np.uint8)
    images = np.resize(every_value, (2, 28, 28)).astype(np.uint8)
    as_float = images.astype(np.float32) / np.float32(255)
    build = raw_request if encoding == "raw" else typed_request
    from_fp32 = decode(build(as_float, "FP32", [2, 1, 28, 28]))
    from_uint8 = decode(build(images, "UINT8", [2, 1, 28, 28]))
    np.testing.assert_array_equal(from_fp32, from_uint8)


def test_fp32_k_over_255_in_float64_then_float32_is_also_exact() -> None:
    values = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
    images = np.resize(values, (1, 28, 28))
    expected = np.resize(np.arange(256, dtype=np.uint8), (1, 1, 28, 28))
    np.testing.assert_array_equal(decode(raw_request(images, "FP32", [1, 28, 28])), expected)


def test_fp32_between_grid_points_rounds_to_nearest() -> None:
    images = np.zeros((1, 28, 28), dtype=np.float32)
    images[0, 0, :4] = [0.3 / 255, 0.7 / 255, 254.6 / 255, 1.0]
    pixels = decode(raw_request(images, "FP32", [1, 28, 28]))
    assert pixels[0, 0, 0, :4].tolist() == [0, 1, 255, 255]


@pytest.mark.parametrize(
    ("bad_value", "shown"),
    [(-0.001, "-0.001"), (1.01, "1.01"), (np.nan, "nan"), (np.inf, "inf"), (255.0, "255.0")],
)
@pytest.mark.parametrize("encoding", ["raw", "typed"])
def test_fp32_outside_zero_one_is_rejected(bad_value: float, shown: str, encoding: str) -> None:
    images = np.full((1, 28, 28), 0.5, dtype=np.float32)
    images[0, 3, 4] = bad_value
    build = raw_request if encoding == "raw" else typed_request
    message = decode_error(build(images, "FP32", [1, 28, 28]))
    assert "in [0,1]" in message
    assert shown in message
    assert "element 88" in message  # row 3, column 4 of the first image
    assert "UINT8" in message


def test_typed_uint8_value_above_255_is_rejected() -> None:
    request = typed_request(np.zeros((1, 28, 28), dtype=np.uint32), "UINT8", [1, 28, 28])
    request.inputs[0].contents.uint_contents[5] = 256
    message = decode_error(request)
    assert "[0, 255]" in message
    assert "256" in message
    assert "element 5" in message


@pytest.mark.parametrize("datatype", ["INT32", "FP64", "FP16", "uint8", ""])
def test_unsupported_datatype_names_what_is_expected(datatype: str) -> None:
    request = raw_request(random_images(1), datatype, [1, 28, 28])
    message = decode_error(request)
    assert f"'{datatype}' is not accepted" in message
    assert EXPECTED_INPUT in message


@pytest.mark.parametrize(
    "shape",
    [[784], [1, 784], [1, 28, 28, 1], [1, 3, 28, 28], [1, 1, 28, 27], [28, 28], [1, 1, 1, 28, 28]],
)
def test_unsupported_shape_names_the_expected_shapes(shape: list[int]) -> None:
    request = raw_request(random_images(1), "UINT8", shape)
    message = decode_error(request)
    assert "UINT8 [N,1,28,28]" in message
    assert "UINT8" in message
    assert "[" + ",".join(map(str, shape)) + "]" in message


@pytest.mark.parametrize("batch", [0, -1])
def test_no_images_is_rejected(batch: int) -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name=INPUT, datatype="UINT8", shape=[batch, 28, 28])
    request.raw_input_contents.append(b"")
    message = decode_error(request)
    assert "holds no batch entry" in message or "is not accepted" in message


def test_too_many_images_is_rejected_before_reading_data() -> None:
    request = pb.ModelInferRequest()
    request.inputs.add(name=INPUT, datatype="UINT8", shape=[10**9, 28, 28])
    request.raw_input_contents.append(b"")
    message = decode_error(request, max_images=MAX_IMAGES)
    assert f"batch of {10**9} is too large; at most {MAX_IMAGES}" in message


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_raw_length_mismatch_names_expected_and_actual_bytes(datatype: str) -> None:
    item = 1 if datatype == "UINT8" else 4
    request = pb.ModelInferRequest()
    request.inputs.add(name=INPUT, datatype=datatype, shape=[2, 28, 28])
    request.raw_input_contents.append(b"\0" * (2 * 784 * item - 1))
    message = decode_error(request)
    assert f"holds {2 * 784 * item - 1} bytes, expected {2 * 784 * item} bytes" in message
    assert datatype in message


def test_typed_length_mismatch_names_expected_and_actual_count() -> None:
    request = typed_request(np.zeros(783, dtype=np.uint8), "UINT8", [1, 28, 28])
    assert "holds 783 values, expected 784 for UINT8" in decode_error(request)


def test_typed_data_in_the_wrong_field_is_rejected() -> None:
    request = typed_request(np.zeros((1, 28, 28), dtype=np.float32), "FP32", [1, 28, 28])
    request.inputs[0].datatype = "UINT8"
    message = decode_error(request)
    assert "contents.uint_contents" in message
    assert "contents.fp32_contents" in message


def test_both_raw_and_typed_contents_is_rejected() -> None:
    request = typed_request(random_images(1), "UINT8", [1, 28, 28])
    request.raw_input_contents.append(random_images(1).tobytes())
    assert "both contents and raw_input_contents" in decode_error(request)


def test_more_raw_buffers_than_inputs_is_rejected() -> None:
    request = raw_request(random_images(1), "UINT8", [1, 28, 28])
    request.raw_input_contents.append(b"extra")
    assert "raw_input_contents holds 2 entries" in decode_error(request)


def test_wrong_input_name_and_input_count_are_rejected() -> None:
    request = raw_request(random_images(1), "UINT8", [1, 28, 28])
    request.inputs[0].name = "input__0"
    assert "unknown input 'input__0'" in decode_error(request)
    assert "'pixels'" in decode_error(request)
    assert "got 0;" in decode_error(pb.ModelInferRequest())
    twice = raw_request(random_images(1), "UINT8", [1, 28, 28])
    twice.inputs.add(name=INPUT, datatype="UINT8", shape=[1, 28, 28])
    assert "got 2;" in decode_error(twice)


@given(
    count=st.integers(min_value=1, max_value=8),
    flat=st.booleans(),
    datatype=st.sampled_from(["UINT8", "FP32"]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_random_valid_requests_round_trip(count: int, flat: bool, datatype: str, seed: int) -> None:
    images = random_images(count, seed)
    data = images if datatype == "UINT8" else images.astype(np.float32) / np.float32(255)
    shape = [count, 28, 28] if flat else [count, 1, 28, 28]
    for build in (raw_request, typed_request):
        np.testing.assert_array_equal(decode(build(data, datatype, shape))[:, 0], images)


@given(
    shape=st.lists(st.integers(min_value=-2, max_value=40), min_size=0, max_size=5),
    extra_bytes=st.integers(min_value=-784, max_value=784),
)
def test_random_shapes_and_lengths_decode_or_raise_invalid_input(
    shape: list[int], extra_bytes: int
) -> None:
    valid_shape = (
        len(shape) in (3, 4)
        and shape[1:] in ([1, 28, 28], [28, 28])
        and 1 <= shape[0] <= MAX_IMAGES
    )
    expected_bytes = shape[0] * 784 if valid_shape else 784
    request = pb.ModelInferRequest()
    request.inputs.add(name=INPUT, datatype="UINT8", shape=shape)
    request.raw_input_contents.append(b"\x07" * max(0, expected_bytes + extra_bytes))
    if valid_shape and extra_bytes == 0:
        pixels = decode(request)
        assert pixels.shape == (shape[0], 1, 28, 28)
        assert bool((pixels == 7).all())
    else:
        with pytest.raises(InvalidInputError):
            decode(request)


# --- outputs -------------------------------------------------------------------------------


def test_select_outputs_defaults_to_every_model_output() -> None:
    assert select_outputs(pb.ModelInferRequest(), MODEL_OUTPUTS) is None


def test_select_outputs_keeps_the_requested_order() -> None:
    request = pb.ModelInferRequest()
    request.outputs.add(name="logits")
    request.outputs.add(name="probabilities")
    assert select_outputs(request, MODEL_OUTPUTS) == (
        RequestedOutput("logits"),
        RequestedOutput("probabilities"),
    )


def test_unknown_output_lists_the_model_outputs() -> None:
    request = pb.ModelInferRequest()
    request.outputs.add(name="scores")
    with pytest.raises(InvalidInputError, match="unknown output 'scores'") as caught:
        select_outputs(request, MODEL_OUTPUTS)
    assert "'probabilities', 'logits'" in str(caught.value)


def test_duplicate_output_is_rejected() -> None:
    request = pb.ModelInferRequest()
    request.outputs.add(name="logits")
    request.outputs.add(name="logits")
    with pytest.raises(InvalidInputError, match="more than once"):
        select_outputs(request, MODEL_OUTPUTS)


def model_outputs(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    logits = rng.standard_normal((rows, 10)).astype(np.float32)
    exp = np.exp(logits)
    return {"logits": logits, "probabilities": (exp / exp.sum(axis=1, keepdims=True))}


def test_encode_raw_outputs_round_trip_little_endian() -> None:
    outputs = model_outputs(3)
    response = pb.ModelInferResponse()
    encode_outputs(
        response, {"probabilities": outputs["probabilities"], "logits": outputs["logits"]}, raw=True
    )
    assert [t.name for t in response.outputs] == ["probabilities", "logits"]
    assert len(response.raw_output_contents) == 2
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        assert tensor.datatype == "FP32"
        assert list(tensor.shape) == [3, 10]
        assert not tensor.HasField("contents")
        decoded = np.frombuffer(raw, dtype="<f4").reshape(3, 10)
        np.testing.assert_array_equal(decoded, outputs[tensor.name])


def test_encode_typed_outputs_only_the_requested_ones() -> None:
    outputs = model_outputs(2)
    response = pb.ModelInferResponse()
    encode_outputs(response, {"logits": outputs["logits"]}, raw=False)
    assert [t.name for t in response.outputs] == ["logits"]
    assert len(response.raw_output_contents) == 0
    values = np.array(response.outputs[0].contents.fp32_contents, dtype=np.float32)
    np.testing.assert_array_equal(values.reshape(2, 10), outputs["logits"])


def test_encode_unknown_dtype_is_a_bug_not_bad_input() -> None:
    with pytest.raises(TypeError, match="no V2 encoding"):
        encode_outputs(pb.ModelInferResponse(), {"x": np.zeros(2, dtype=np.complex64)}, raw=True)


# --- the timeout parameter -----------------------------------------------------------------


def test_timeout_absent_or_zero_means_no_queue_bound() -> None:
    request = pb.ModelInferRequest()
    assert queue_timeout_s(request) is None
    request.parameters["timeout"].int64_param = 0
    assert queue_timeout_s(request) is None


def test_timeout_is_microseconds() -> None:
    request = pb.ModelInferRequest()
    request.parameters["timeout"].int64_param = 250_000
    assert queue_timeout_s(request) == pytest.approx(0.25)
    request.parameters["timeout"].uint64_param = 2_000_000
    assert queue_timeout_s(request) == pytest.approx(2.0)


def test_timeout_negative_or_wrong_kind_is_rejected() -> None:
    request = pb.ModelInferRequest()
    request.parameters["timeout"].int64_param = -5
    with pytest.raises(InvalidInputError, match=">= 0 microseconds, got -5"):
        queue_timeout_s(request)
    request.parameters["timeout"].string_param = "1s"
    with pytest.raises(InvalidInputError, match="int64 number of microseconds"):
        queue_timeout_s(request)


@pytest.mark.parametrize(
    ("model", "version", "request_id", "outputs"),
    [
        ("mnist", "1", "req-7", {"probabilities": np.full((1, 10), 0.1, dtype=np.float32)}),
        (
            "mnist",
            "12",
            "",
            {
                "probabilities": np.random.default_rng(SEED).random((64, 10), dtype=np.float32),
                "logits": np.arange(-320.0, 320.0, dtype=np.float32).reshape(64, 10),
            },
        ),
        ("", "", "ü-id", {"scalar": np.array(3, dtype=np.int64)}),
        ("fashion", "3", "x" * 300, {"classes": np.array([[b"0.9:7"], [b"0.5:1"]], dtype=object)}),
    ],
)
def test_a_raw_reply_written_field_by_field_decodes_to_the_protobuf_reply(
    model: str, version: str, request_id: str, outputs: dict[str, np.ndarray]
) -> None:
    core = InferenceResponse(
        model, version, request_id, inference.encode_outputs(outputs, None, ())
    )
    written = grpc_response_bytes(core, raw=True)
    assert pb.ModelInferResponse.FromString(written) == grpc_response(core, raw=True)
    assert grpc_response_bytes(core, raw=True) == written  # the same from its memo


def test_a_typed_reply_is_the_protobuf_reply_serialised() -> None:
    outputs = {"probabilities": np.full((2, 10), 0.25, dtype=np.float32)}
    core = InferenceResponse("mnist", "1", "id", inference.encode_outputs(outputs, None, ()))
    written = grpc_response_bytes(core, raw=False)
    assert pb.ModelInferResponse.FromString(written) == grpc_response(core, raw=False)
