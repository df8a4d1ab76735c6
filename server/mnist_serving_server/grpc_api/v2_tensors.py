"""KServe V2 protobuf tensors <-> numpy (docs/v2_protocol.md).

Only the wire form lives here: which `InferTensorContents` field carries a datatype, raw
little-endian bytes, BYTES length prefixes, request parameters. What a model accepts is
checked in `core.tensors` against the graph, the same for every transport.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.runtime import TensorSpec
from mnist_serving_server.core.tensors import (
    BYTES,
    WIRE_DTYPES,
    describe_input,
    format_shape,
    plan_input,
    to_model_array,
)

TIMEOUT_PARAMETER: Final = "timeout"
"""Triton's request parameter: int64 microseconds the request may spend queued; 0 = none."""
CLASSIFICATION_PARAMETER: Final = "classification"
"""Triton's output parameter: answer the N best classes as BYTES strings."""
MICROSECONDS_PER_SECOND: Final = 1_000_000
_BYTES_LENGTH: Final = struct.Struct("<I")

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


@dataclass(frozen=True)
class RequestedOutput:
    """An output to return; `class_count` > 0 answers it as Triton's classification."""

    name: str
    class_count: int = 0


def decode_input(request: pb.ModelInferRequest, spec: TensorSpec, *, max_rows: int) -> DecodedInput:
    """The request's single input as the model takes it; InvalidInputError if malformed."""
    if len(request.inputs) != 1:
        raise InvalidInputError(
            f"expected exactly one input, got {len(request.inputs)}; the model takes one "
            f"input {spec.name!r}: {describe_input(spec)}"
        )
    tensor = request.inputs[0]
    plan = plan_input(spec, tensor.name, tensor.datatype, tensor.shape, max_rows=max_rows)
    raw = len(request.raw_input_contents) > 0
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
    if len(request.raw_input_contents) != len(request.inputs):
        raise InvalidInputError(
            f"raw_input_contents holds {len(request.raw_input_contents)} entries, expected one "
            f"per input ({len(request.inputs)})"
        )
    if tensor.HasField("contents"):
        raise InvalidInputError(
            f"input {tensor.name!r}: both contents and raw_input_contents are set; send one"
        )
    buffer = request.raw_input_contents[0]
    expected_bytes = values * wire_dtype.itemsize
    if len(buffer) != expected_bytes:
        raise InvalidInputError(
            f"input {tensor.name!r}: raw_input_contents[0] holds {len(buffer)} bytes, expected "
            f"{expected_bytes} bytes for {tensor.datatype} shape {format_shape(tensor.shape)}"
        )
    # A view of the message's bytes: no copy (read-only, which the runtime only reads).
    return np.frombuffer(buffer, dtype=wire_dtype)


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
    selected: list[RequestedOutput] = []
    for output in request.outputs:
        if output.name not in model_outputs:
            raise InvalidInputError(
                f"unknown output {output.name!r}; the model's outputs are "
                + ", ".join(f"{known!r}" for known in model_outputs)
            )
        selected.append(RequestedOutput(output.name, _class_count(output)))
    names = [output.name for output in selected]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"an output is requested more than once: {names}")
    return tuple(selected)


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
        return b"".join(_BYTES_LENGTH.pack(len(item)) + item for item in array.ravel().tolist())
    return array.astype(WIRE_DTYPES[datatype], copy=False).tobytes()


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
