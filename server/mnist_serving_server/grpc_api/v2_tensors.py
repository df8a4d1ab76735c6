"""KServe V2 tensors <-> numpy: the model's pixels in, its outputs back.

Pure numpy and protobuf (no grpc): the V2 servicer calls these to turn a
`ModelInferRequest` into the uint8 `[n,1,28,28]` array the batcher takes, and the
model's outputs into `ModelInferResponse` tensors. Every malformed request raises
`InvalidInputError` with a message that names what was expected (docs/v2_protocol.md).

Accepted inputs: exactly one input tensor, named like the model's input, shaped
`[N,1,28,28]` or `[N,28,28]`, either
- UINT8 (the model's native pixels 0-255), or
- FP32 in [0,1] (torchvision `ToTensor`: pixel / 255), converted to
  `uint8 = round(x * 255)` (nearest, ties to even), so `x = k/255` gives exactly `k`
  and FP32 requests answer exactly like UINT8 ones,
as typed `contents` (`uint_contents` / `fp32_contents`) or as `raw_input_contents`
(little-endian bytes; UINT8 raw bytes are used without a copy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server.core.errors import InvalidInputError

IMAGE_SIDE: Final = 28
PIXELS_PER_IMAGE: Final = IMAGE_SIDE * IMAGE_SIDE
MAX_PIXEL: Final = 255
"""The largest uint8 pixel; FP32 pixels are scaled by it (torchvision ToTensor)."""

UINT8: Final = "UINT8"
FP32: Final = "FP32"

TIMEOUT_PARAMETER: Final = "timeout"
"""Triton's request parameter: int64 microseconds the request may spend queued; 0 = none."""
MICROSECONDS_PER_SECOND: Final = 1_000_000

EXPECTED_INPUT: Final = (
    "expected datatype UINT8 (pixels 0-255) or FP32 (pixels in [0,1], pixel/255) "
    "with shape [N,1,28,28] or [N,28,28]"
)

# Input datatypes accepted on the wire: numpy dtype of raw (little-endian) bytes, and the
# InferTensorContents field holding typed values.
_INPUT_WIRE_DTYPES: Final[Mapping[str, np.dtype[Any]]] = {
    UINT8: np.dtype(np.uint8),
    FP32: np.dtype("<f4"),
}
_INPUT_CONTENTS_FIELDS: Final[Mapping[str, str]] = {
    UINT8: "uint_contents",
    FP32: "fp32_contents",
}

# Output numpy dtype -> (V2 datatype, InferTensorContents field, little-endian wire dtype).
_OUTPUT_ENCODINGS: Final[Mapping[np.dtype[Any], tuple[str, str, np.dtype[Any]]]] = {
    np.dtype(np.float32): (FP32, "fp32_contents", np.dtype("<f4")),
    np.dtype(np.float64): ("FP64", "fp64_contents", np.dtype("<f8")),
    np.dtype(np.int32): ("INT32", "int_contents", np.dtype("<i4")),
    np.dtype(np.int64): ("INT64", "int64_contents", np.dtype("<i8")),
    np.dtype(np.uint8): (UINT8, "uint_contents", np.dtype(np.uint8)),
}

_CONTENTS_FIELDS: Final = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)


@dataclass(frozen=True)
class DecodedInput:
    """The request's pixels, ready for the batcher."""

    pixels: npt.NDArray[np.uint8]
    """uint8 `[n,1,28,28]`, n >= 1."""
    raw: bool
    """The request sent `raw_input_contents`, so the reply uses `raw_output_contents`."""
    datatype: str
    """The datatype the client sent (UINT8 or FP32)."""


def decode_input(
    request: pb.ModelInferRequest, *, input_name: str, max_images: int
) -> DecodedInput:
    """The request's single input as uint8 `[n,1,28,28]`; InvalidInputError if malformed."""
    if len(request.inputs) != 1:
        raise InvalidInputError(
            f"expected exactly one input '{input_name}', got {len(request.inputs)} inputs "
            f"({EXPECTED_INPUT})"
        )
    tensor = request.inputs[0]
    if tensor.name != input_name:
        raise InvalidInputError(
            f"unknown input '{tensor.name}': the model's only input is '{input_name}'"
        )
    wire_dtype = _INPUT_WIRE_DTYPES.get(tensor.datatype)
    if wire_dtype is None:
        raise InvalidInputError(
            f"input '{input_name}': datatype '{tensor.datatype}' is not supported; {EXPECTED_INPUT}"
        )
    images = _image_count(tensor.shape, input_name)
    if images > max_images:
        raise InvalidInputError(
            f"input '{input_name}': too many images: {images}, at most {max_images} per request"
        )
    values = images * PIXELS_PER_IMAGE
    raw = len(request.raw_input_contents) > 0
    if raw:
        flat = _raw_values(request, tensor, wire_dtype, values, input_name)
    else:
        flat = _typed_values(tensor, values, input_name)
    if tensor.datatype == FP32:
        pixels = _fp32_to_pixels(flat.astype(np.float32, copy=False), input_name)
    else:
        pixels = _uint_to_pixels(flat, input_name)
    return DecodedInput(
        pixels=pixels.reshape(images, 1, IMAGE_SIDE, IMAGE_SIDE), raw=raw, datatype=tensor.datatype
    )


def _image_count(shape: Sequence[int], input_name: str) -> int:
    """N for shape [N,1,28,28] or [N,28,28] with N >= 1."""
    dims = tuple(shape)
    image_dims = dims[1:]
    if image_dims not in ((1, IMAGE_SIDE, IMAGE_SIDE), (IMAGE_SIDE, IMAGE_SIDE)):
        raise InvalidInputError(
            f"input '{input_name}': shape {_format_shape(dims)} is not supported; {EXPECTED_INPUT}"
        )
    if dims[0] < 1:
        raise InvalidInputError(
            f"input '{input_name}': shape {_format_shape(dims)} holds no image; N must be >= 1"
        )
    return dims[0]


def _raw_values(
    request: pb.ModelInferRequest,
    tensor: pb.ModelInferRequest.InferInputTensor,
    wire_dtype: np.dtype[Any],
    values: int,
    input_name: str,
) -> npt.NDArray[Any]:
    if len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents holds {len(request.raw_input_contents)} entries, expected one "
            f"per input ({len(request.inputs)})"
        )
    if tensor.HasField("contents"):
        raise InvalidInputError(
            f"input '{input_name}': both contents and raw_input_contents are set; send one"
        )
    buffer = request.raw_input_contents[0]
    expected_bytes = values * wire_dtype.itemsize
    if len(buffer) != expected_bytes:
        raise InvalidInputError(
            f"input '{input_name}': raw_input_contents[0] holds {len(buffer)} bytes, expected "
            f"{expected_bytes} bytes for {tensor.datatype} shape {_format_shape(tensor.shape)}"
        )
    # A view of the message's bytes: no copy (read-only, which the runtime only reads).
    return np.frombuffer(buffer, dtype=wire_dtype)


def _typed_values(
    tensor: pb.ModelInferRequest.InferInputTensor, values: int, input_name: str
) -> npt.NDArray[Any]:
    field = _INPUT_CONTENTS_FIELDS[tensor.datatype]
    contents = tensor.contents
    for other in _CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)) > 0:
            raise InvalidInputError(
                f"input '{input_name}': {tensor.datatype} data belongs in contents.{field}, "
                f"got contents.{other}"
            )
    typed = getattr(contents, field)
    if len(typed) != values:
        raise InvalidInputError(
            f"input '{input_name}': contents.{field} holds {len(typed)} values, expected "
            f"{values} for shape {_format_shape(tensor.shape)}"
        )
    wire_dtype = np.uint32 if tensor.datatype == UINT8 else np.float32
    return np.fromiter(typed, dtype=wire_dtype, count=values)


def _uint_to_pixels(flat: npt.NDArray[Any], input_name: str) -> npt.NDArray[np.uint8]:
    if flat.dtype == np.uint8:
        return flat
    # Typed UINT8 travels as uint32 on the wire: every value must fit a pixel.
    too_big = np.flatnonzero(flat > MAX_PIXEL)
    if too_big.size:
        index = int(too_big[0])
        raise InvalidInputError(
            f"input '{input_name}': UINT8 values must be 0-{MAX_PIXEL}, got {int(flat[index])} "
            f"at element {index}"
        )
    return flat.astype(np.uint8)


def _fp32_to_pixels(flat: npt.NDArray[np.float32], input_name: str) -> npt.NDArray[np.uint8]:
    # One vectorised range test also catches NaN (every comparison with NaN is false).
    in_range = (flat >= 0.0) & (flat <= 1.0)
    if not bool(in_range.all()):
        index = int(np.flatnonzero(~in_range)[0])
        raise InvalidInputError(
            f"input '{input_name}': FP32 pixels must be finite and in [0,1] (pixel/255, the "
            f"torchvision ToTensor convention; normalisation happens inside the model), got "
            f"{flat[index]!s} at element {index}; send 0-255 values as UINT8"
        )
    scaled = np.multiply(flat, np.float32(MAX_PIXEL), dtype=np.float32)
    # Nearest, not truncation: fl32(k/255) * 255 may land a hair below k.
    return np.rint(scaled, out=scaled).astype(np.uint8)


def select_outputs(request: pb.ModelInferRequest, model_outputs: Sequence[str]) -> tuple[str, ...]:
    """The outputs to return, in order: those requested, else every model output."""
    if not request.outputs:
        return tuple(model_outputs)
    names = tuple(output.name for output in request.outputs)
    for name in names:
        if name not in model_outputs:
            raise InvalidInputError(
                f"unknown output '{name}'; the model's outputs are "
                + ", ".join(f"'{known}'" for known in model_outputs)
            )
    if len(set(names)) != len(names):
        raise InvalidInputError(f"an output is requested more than once: {list(names)}")
    return names


def encode_outputs(
    response: pb.ModelInferResponse,
    outputs: Mapping[str, npt.NDArray[Any]],
    names: Sequence[str],
    *,
    raw: bool,
) -> None:
    """Append the named outputs to `response`: raw little-endian bytes if `raw`, else typed."""
    for name in names:
        array = outputs[name]
        encoding = _OUTPUT_ENCODINGS.get(array.dtype)
        if encoding is None:
            # The model's outputs are fixed at load time; this is a bug, not bad input.
            raise TypeError(f"output '{name}' has dtype {array.dtype}, which has no V2 encoding")
        datatype, field, wire_dtype = encoding
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(array.astype(wire_dtype, copy=False).tobytes())
        else:
            getattr(tensor.contents, field).extend(array.ravel().tolist())


def queue_timeout_s(request: pb.ModelInferRequest) -> float | None:
    """The `timeout` request parameter (int64 microseconds) in seconds; None when absent or 0."""
    if TIMEOUT_PARAMETER not in request.parameters:
        return None
    parameter = request.parameters[TIMEOUT_PARAMETER]
    kind = parameter.WhichOneof("parameter_choice")
    if kind == "int64_param":
        micros = parameter.int64_param
    elif kind == "uint64_param":
        micros = parameter.uint64_param
    else:
        raise InvalidInputError(
            f"parameter '{TIMEOUT_PARAMETER}' must be an int64 number of microseconds, got {kind}"
        )
    if micros < 0:
        raise InvalidInputError(
            f"parameter '{TIMEOUT_PARAMETER}' must be >= 0 microseconds, got {micros}"
        )
    return None if micros == 0 else micros / MICROSECONDS_PER_SECOND


def _format_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
