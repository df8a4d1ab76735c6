"""KServe V2 protobuf <-> the core's InferenceRequest / InferenceResponse (docs/v2_protocol.md).

Only the protobuf form lives here: which `InferTensorContents` field carries a datatype,
`raw_input_contents`, parameters as protobuf oneofs. What the values mean, and whether the
model takes them, is decided in `core.inference`, the same for every transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from google.protobuf.internal.containers import RepeatedScalarFieldContainer

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server import protobuf_wire as wire
from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.inference import (
    CLASSIFICATION_PARAMETER,
    TIMEOUT_PARAMETER,
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    malformed,
    requested_output,
)
from mnist_serving_server.core.tensors import BYTES

# V2 datatype -> the InferTensorContents field that carries its typed values.
_CONTENTS: Final[Mapping[str, str]] = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
_CONTENTS_FIELDS: Final = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)
_INTEGER_PARAMETERS: Final = ("int64_param", "uint64_param")


def core_request(
    request: pb.ModelInferRequest, deadline: float | None = None
) -> tuple[InferenceRequest, bool]:
    """The core's request, and whether the reply goes in `raw_output_contents` (it does when
    the request came in `raw_input_contents`). `deadline`: gRPC's, as time.monotonic()."""
    try:
        return _parse(request, deadline)
    except InvalidInputError as error:
        return malformed(request.model_name, request.model_version, error), False


def _parse(request: pb.ModelInferRequest, deadline: float | None) -> tuple[InferenceRequest, bool]:
    if len(request.inputs) != 1:
        raise InvalidInputError(
            f"expected exactly one input, got {len(request.inputs)}; the model takes one input"
        )
    tensor = request.inputs[0]
    raw = len(request.raw_input_contents) > 0
    core = InferenceRequest(
        request.model_name,
        request.model_version,
        _input(request, tensor, raw),
        request_id=request.id,
        outputs=[
            requested_output(output.name, _parameter(output.parameters, CLASSIFICATION_PARAMETER))
            for output in request.outputs
        ],
        timeout=_parameter(request.parameters, TIMEOUT_PARAMETER),
        deadline=deadline,
    )
    return core, raw


def _input(
    request: pb.ModelInferRequest, tensor: pb.ModelInferRequest.InferInputTensor, raw: bool
) -> InputTensor:
    name, datatype, shape = tensor.name, tensor.datatype, tensor.shape
    if raw:
        if len(request.raw_input_contents) != len(request.inputs):
            raise InvalidInputError(
                f"raw_input_contents holds {len(request.raw_input_contents)} entries, expected "
                f"one per input ({len(request.inputs)})"
            )
        if tensor.HasField("contents"):
            raise InvalidInputError(
                f"input {name!r}: both contents and raw_input_contents are set; send one"
            )
        return InputTensor(name, datatype, shape, raw=request.raw_input_contents[0])
    field = _CONTENTS.get(datatype)
    contents = tensor.contents
    for other in _CONTENTS_FIELDS:
        if other != field and len(getattr(contents, other)) > 0:
            expected = f"contents.{field}" if field else "no contents field of V2"
            raise InvalidInputError(
                f"input {name!r}: {datatype} data belongs in {expected}, got contents.{other}"
            )
    if field is None:  # FP16 and unknown datatypes have no typed field: the core names them
        return InputTensor(name, datatype, shape, values=[])
    typed: RepeatedScalarFieldContainer[Any] = getattr(contents, field)
    if datatype == BYTES:
        return InputTensor(name, datatype, shape, elements=typed)
    # A protobuf integer field holds integers only; bool_contents is the one boolean field.
    booleans = field == "bool_contents"
    return InputTensor(name, datatype, shape, values=typed, booleans_possible=booleans)


def _parameter(parameters: Mapping[str, pb.InferParameter], name: str) -> object:
    """A parameter's value as sent (None when absent): the core checks what it must be."""
    if name not in parameters:
        return None
    parameter = parameters[name]
    kind = parameter.WhichOneof("parameter_choice")
    if kind is None:
        return None
    value: object = getattr(parameter, kind)
    if kind in _INTEGER_PARAMETERS:
        return int(value)  # type: ignore[call-overload]
    return value


# ModelInferResponse's fields, and its InferOutputTensor's (proto/open_inference.proto).
_MODEL_NAME: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_MODEL_VERSION: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_ID: Final = wire.tag(3, wire.LENGTH_DELIMITED)
_OUTPUT: Final = wire.tag(5, wire.LENGTH_DELIMITED)
_RAW_OUTPUT_CONTENTS: Final = wire.tag(6, wire.LENGTH_DELIMITED)
_OUTPUT_NAME: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_OUTPUT_DATATYPE: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_OUTPUT_SHAPE: Final = wire.tag(3, wire.LENGTH_DELIMITED)  # packed int64
# An output's InferOutputTensor, by (name, datatype, shape): a model answers with a few.
_OUTPUT_MEMO_SIZE: Final = 256
_OUTPUTS: dict[tuple[str, str, tuple[int, ...]], bytes] = {}


def grpc_response_bytes(response: InferenceResponse, *, raw: bool) -> bytes:
    """The serialised reply (what `grpc_response(...).SerializeToString()` gives, decoded
    equal). A raw reply is written field by field: the native front answers with bytes,
    and building a protobuf object first costs 2.4 x as much (docs/performance.md)."""
    if not raw:
        return grpc_response(response, raw=False).SerializeToString()
    outputs = response.outputs
    return b"".join(
        (
            wire.string_field(_MODEL_NAME, response.model),
            wire.string_field(_MODEL_VERSION, response.version),
            wire.string_field(_ID, response.id),
            *(_output_tensor(output.name, output.datatype, output.shape) for output in outputs),
            *(
                wire.length_delimited(_RAW_OUTPUT_CONTENTS, output.wire_bytes())
                for output in outputs
            ),
        )
    )


def _output_tensor(name: str, datatype: str, shape: tuple[int, ...]) -> bytes:
    """One `outputs` entry (its contents travel in raw_output_contents)."""
    key = (name, datatype, shape)
    known = _OUTPUTS.get(key)
    if known is None:
        dims = b"".join(wire.varint(dim) for dim in shape)
        known = wire.length_delimited(
            _OUTPUT,
            wire.string_field(_OUTPUT_NAME, name)
            + wire.string_field(_OUTPUT_DATATYPE, datatype)
            + (wire.length_delimited(_OUTPUT_SHAPE, dims) if dims else b""),
        )
        if len(_OUTPUTS) >= _OUTPUT_MEMO_SIZE:
            _OUTPUTS.clear()
        _OUTPUTS[key] = known
    return known


def grpc_response(response: InferenceResponse, *, raw: bool) -> pb.ModelInferResponse:
    """The protobuf reply: raw little-endian bytes if `raw`, else typed contents."""
    reply = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    for output in response.outputs:
        tensor = reply.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
        if raw:
            reply.raw_output_contents.append(output.wire_bytes())
        else:
            getattr(tensor.contents, _CONTENTS[output.datatype]).extend(
                output.array.ravel().tolist()
            )
    return reply
