"""KServe V2 protobuf tensors <-> numpy (docs/v2_protocol.md).

Only the wire form lives here: which `InferTensorContents` field carries a datatype, raw
little-endian bytes, BYTES length prefixes, request parameters. What a model accepts is
checked in `core.tensors` against the graph, the same for every transport.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.images import DEFAULT_MAX_DECODED_PIXELS
from mnist_serving_server.core.runtime import TensorSpec
from mnist_serving_server.core.tensors import (
    BYTES,
    WIRE_DTYPES,
    RequestedOutput,
    check_requested_outputs,
    describe_input,
    encoded_images,
    format_shape,
    join_bytes_elements,
    plan_input,
    queue_timeout_from_micros,
    split_bytes_elements,
    takes_encoded,
    to_model_array,
)

TIMEOUT_PARAMETER: Final = "timeout"
"""Triton's request parameter: int64 microseconds the request may spend queued; 0 = none."""
CLASSIFICATION_PARAMETER: Final = "classification"
"""Triton's output parameter: answer the N best classes as BYTES strings."""

# V2 datatype -> (InferTensorContents field, the numpy dtype its values arrive as).
_CONTENTS: Final[Mapping[str, tuple[str, np.dtype[Any]]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    BYTES: ("bytes_contents", np.dtype(np.object_)),
}
# numpy dtype of a model output -> its V2 datatype.
_OUTPUT_DATATYPES: Final[Mapping[np.dtype[Any], str]] = {
    dtype.newbyteorder("="): name for name, dtype in WIRE_DTYPES.items()
}
_CONTENTS_FIELDS: Final = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)


@dataclass(frozen=True)
class DecodedInput:
    """The request's input, ready for the batcher."""

    array: npt.NDArray[Any]
    """In the model's dtype and rank, [n, ...] with n >= 1."""
    raw: bool
    """The request sent `raw_input_contents`, so the reply uses `raw_output_contents`."""


def decode_input(
    request: pb.ModelInferRequest,
    spec: TensorSpec,
    *,
    max_rows: int,
    max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
) -> DecodedInput:
    """The request's single input as the model takes it; InvalidInputError if malformed.

    A BYTES input to a UINT8 image model is a batch of PNG/JPEG files (core.tensors)."""
    if len(request.inputs) != 1:
        raise InvalidInputError(
            f"expected exactly one input, got {len(request.inputs)}; the model takes one "
            f"input {spec.name!r}: {describe_input(spec)}"
        )
    tensor = request.inputs[0]
    raw = len(request.raw_input_contents) > 0
    if takes_encoded(spec, tensor.datatype):
        if raw:
            _check_raw_entries(request, tensor)
            elements = split_bytes_elements(request.raw_input_contents[0], tensor.name)
        else:
            elements = list(tensor.contents.bytes_contents)
        array = encoded_images(
            spec,
            tensor.name,
            tensor.shape,
            elements,
            max_rows=max_rows,
            max_decoded_pixels=max_decoded_pixels,
        )
        return DecodedInput(array=array, raw=raw)
    plan = plan_input(spec, tensor.name, tensor.datatype, tensor.shape, max_rows=max_rows)
    if raw:
        flat = _raw_values(request, tensor, plan.wire_dtype, plan.values)
    else:
        flat = _typed_values(tensor, plan.values)
    return DecodedInput(array=to_model_array(flat, plan), raw=raw)


def _raw_values(
    request: pb.ModelInferRequest,
    tensor: pb.ModelInferRequest.InferInputTensor,
    wire_dtype: np.dtype[Any],
    values: int,
) -> npt.NDArray[Any]:
    _check_raw_entries(request, tensor)
    buffer = request.raw_input_contents[0]
    expected_bytes = values * wire_dtype.itemsize
    if len(buffer) != expected_bytes:
        raise InvalidInputError(
            f"input {tensor.name!r}: raw_input_contents[0] holds {len(buffer)} bytes, expected "
            f"{expected_bytes} bytes for {tensor.datatype} shape {format_shape(tensor.shape)}"
        )
    # A view of the message's bytes: no copy (read-only, which the runtime only reads).
    return np.frombuffer(buffer, dtype=wire_dtype)


def _check_raw_entries(
    request: pb.ModelInferRequest, tensor: pb.ModelInferRequest.InferInputTensor
) -> None:
    if len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents holds {len(request.raw_input_contents)} entries, expected one "
            f"per input ({len(request.inputs)})"
        )
    if tensor.HasField("contents"):
        raise InvalidInputError(
            f"input {tensor.name!r}: both contents and raw_input_contents are set; send one"
        )


def _typed_values(tensor: pb.ModelInferRequest.InferInputTensor, values: int) -> npt.NDArray[Any]:
    field, arrives_as = _CONTENTS[tensor.datatype]
    contents = tensor.contents
    for other in _CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)) > 0:
            raise InvalidInputError(
                f"input {tensor.name!r}: {tensor.datatype} data belongs in contents.{field}, "
                f"got contents.{other}"
            )
    typed = getattr(contents, field)
    if len(typed) != values:
        raise InvalidInputError(
            f"input {tensor.name!r}: contents.{field} holds {len(typed)} values, expected "
            f"{values} for shape {format_shape(tensor.shape)}"
        )
    return np.fromiter(typed, dtype=arrives_as, count=values)


def select_outputs(
    request: pb.ModelInferRequest, model_outputs: Sequence[str]
) -> tuple[RequestedOutput, ...] | None:
    """The outputs to return, in order; None when none is named (every output, as computed)."""
    if not request.outputs:
        return None
    selected = [RequestedOutput(output.name, _class_count(output)) for output in request.outputs]
    return check_requested_outputs(selected, model_outputs)


def _class_count(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    if CLASSIFICATION_PARAMETER not in output.parameters:
        return 0
    parameter = output.parameters[CLASSIFICATION_PARAMETER]
    kind = parameter.WhichOneof("parameter_choice")
    count = getattr(parameter, kind) if kind in ("int64_param", "uint64_param") else None
    if count is None or count < 1:
        raise InvalidInputError(
            f"output {output.name!r}: parameter {CLASSIFICATION_PARAMETER!r} must be an int64 "
            f"number of classes >= 1, got {kind}" + ("" if count is None else f" {count}")
        )
    return int(count)


def encode_outputs(
    response: pb.ModelInferResponse,
    outputs: Mapping[str, npt.NDArray[Any]],
    *,
    raw: bool,
) -> None:
    """Append `outputs` (in order) to `response`: raw little-endian bytes if `raw`, else typed."""
    for name, array in outputs.items():
        datatype = BYTES if array.dtype == np.object_ else _OUTPUT_DATATYPES.get(array.dtype)
        if datatype is None:
            # The model's outputs are fixed at load time; this is a bug, not bad input.
            raise TypeError(f"output {name!r} has dtype {array.dtype}, which has no V2 encoding")
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(_raw_bytes(array, datatype))
        else:
            field, _ = _CONTENTS[datatype]
            getattr(tensor.contents, field).extend(array.ravel().tolist())


def _raw_bytes(array: npt.NDArray[Any], datatype: str) -> bytes:
    if datatype == BYTES:
        # Each element: its length as a 4-byte little-endian integer, then its bytes.
        return join_bytes_elements(array)
    return array.astype(WIRE_DTYPES[datatype], copy=False).tobytes()


def queue_timeout_s(request: pb.ModelInferRequest) -> float | None:
    """The `timeout` request parameter (int64 microseconds) in seconds; None when absent or 0."""
    if TIMEOUT_PARAMETER not in request.parameters:
        return None
    parameter = request.parameters[TIMEOUT_PARAMETER]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInputError(
            f"parameter '{TIMEOUT_PARAMETER}' must be an int64 number of microseconds, got {kind}"
        )
    return queue_timeout_from_micros(int(getattr(parameter, kind)), TIMEOUT_PARAMETER)
