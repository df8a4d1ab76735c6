"""The inference request and response every transport speaks to the core.

A front parses its wire format into an `InferenceRequest`: the model and version, the
request id, one input (name, datatype, shape and its payload exactly as it arrived: a raw
little-endian buffer, typed values, or BYTES elements), the requested outputs with their
class counts as the caller wrote them, and the timeouts. Everything about what those
mean is decided here, once, for every transport: the input is checked against the model's
graph and converted (`decode_input`), the outputs are selected and put in wire form
(`encode_outputs`: a V2 datatype, a shape and an array whose bytes are the wire's). The
front only writes the response back in its own format.

The classes are plain, with __slots__: one of each is built per call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.runtime import TensorSpec
from mnist_serving_server.core.tensors import (
    BYTES,
    UINT8,
    WIRE_DTYPES,
    RequestedOutput,
    answer_outputs,
    check_requested_outputs,
    encoded_images,
    format_shape,
    join_bytes_elements,
    plan_input,
    queue_timeout_from_micros,
    split_bytes_elements,
    takes_encoded,
    to_model_array,
)

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

CLASSIFICATION_PARAMETER: Final = "classification"
"""Triton's output parameter: answer the N best classes as BYTES strings."""
TIMEOUT_PARAMETER: Final = "timeout"
"""Triton's request parameter: int64 microseconds the request may spend queued; 0 = none."""

# What typed values of each datatype may be, and the dtype they are gathered in before the
# model's own checks (integers widened, so that an out-of-range value is named, not wrapped).
_INTEGER: Final = frozenset({int})
_NUMBER: Final = frozenset({int, float})
_TYPED: Final[Mapping[str, tuple[frozenset[type], np.dtype[Any]]]] = {
    "BOOL": (frozenset({bool}), np.dtype(np.bool_)),
    "UINT8": (_INTEGER, np.dtype(np.int64)),
    "UINT16": (_INTEGER, np.dtype(np.int64)),
    "UINT32": (_INTEGER, np.dtype(np.int64)),
    "UINT64": (_INTEGER, np.dtype(np.uint64)),
    "INT8": (_INTEGER, np.dtype(np.int64)),
    "INT16": (_INTEGER, np.dtype(np.int64)),
    "INT32": (_INTEGER, np.dtype(np.int64)),
    "INT64": (_INTEGER, np.dtype(np.int64)),
    "FP16": (_NUMBER, np.dtype(np.float32)),
    "FP32": (_NUMBER, np.dtype(np.float32)),
    "FP64": (_NUMBER, np.dtype(np.float64)),
}
# numpy dtype of a model output -> its V2 datatype (BYTES for object arrays of bytes).
_OUTPUT_DATATYPES: Final[Mapping[np.dtype[Any], str]] = {
    dtype.newbyteorder("="): name for name, dtype in WIRE_DTYPES.items()
}


class InputTensor:
    """The request's one input, its payload as it arrived: exactly one of `raw` (the wire's
    little-endian bytes, or length-prefixed BYTES elements; a view, never copied),
    `values` (typed values, flat or nested) or `elements` (BYTES elements)."""

    __slots__ = ("booleans_possible", "datatype", "elements", "name", "raw", "shape", "values")

    def __init__(
        self,
        name: str,
        datatype: str,
        shape: Sequence[int],
        *,
        raw: bytes | memoryview | None = None,
        values: Sequence[Any] | None = None,
        elements: Sequence[bytes] | None = None,
        booleans_possible: bool = True,
    ) -> None:
        self.name = name
        self.datatype = datatype
        self.shape = shape
        self.raw = raw
        self.values = values
        self.elements = elements
        self.booleans_possible = booleans_possible
        """False when the wire cannot have put a boolean among `values` (a protobuf integer
        field; a JSON document without `true` or `false`): the pixels' fast path then
        needs no type scan, as bytes() refuses every other non-integer itself."""


class InferenceRequest:
    """One call: what to run, on what, what to answer, and by when."""

    __slots__ = (
        "deadline",
        "id",
        "input",
        "invalid",
        "model",
        "outputs",
        "resolved_model",
        "resolved_version",
        "timeout",
        "trace",
        "version",
    )

    def __init__(
        self,
        model: str,
        version: str,
        input_tensor: InputTensor,
        *,
        request_id: str = "",
        outputs: Sequence[RequestedOutput] | None = None,
        timeout: object = None,
        deadline: float | None = None,
    ) -> None:
        self.model = model
        self.version = version
        self.input = input_tensor
        self.id = request_id
        self.outputs = outputs
        """The outputs asked for, in order (None or empty: every output)."""
        self.timeout = timeout
        """Triton's `timeout` parameter as the caller sent it (microseconds; checked here)."""
        self.deadline = deadline
        """The transport's deadline (gRPC's), an absolute time.monotonic() value."""
        self.invalid: InvalidInputError | None = None
        """What the front found malformed while parsing, raised by the core only after the
        model is resolved: an unknown model is NOT_FOUND however malformed the rest is, on
        every transport (see `malformed`)."""
        self.resolved_model = ""
        self.resolved_version = ""
        """The served version the core resolved the request to ("" before, or when none is):
        the front counts the call under it, whether it then succeeds or fails."""
        self.trace: SpanContext | None = None
        """The call's server span, when tracing is on and the call is sampled (the front
        sets it): the core's queue, decode and batch spans belong to it (core/tracing.py)."""


NO_INPUT: Final = InputTensor("", "", ())
"""The input of a request the front could not parse (`malformed`)."""


def malformed(model: str, version: str, error: InvalidInputError) -> InferenceRequest:
    """A request whose wire form did not parse: the core resolves `model` first, then raises
    `error`, so the status does not depend on which part a front happens to read first."""
    request = InferenceRequest(model, version, NO_INPUT)
    request.invalid = error
    return request


class OutputTensor:
    """One output in wire form: `array`'s bytes (`wire_bytes()`) are what the wire carries."""

    __slots__ = ("array", "datatype", "name")

    def __init__(self, name: str, datatype: str, array: npt.NDArray[Any]) -> None:
        self.name = name
        self.datatype = datatype
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def wire_bytes(self) -> bytes:
        """The binary form: little-endian values, or each BYTES element length-prefixed."""
        if self.datatype == BYTES:
            return join_bytes_elements(self.array)
        return self.array.tobytes()


class InferenceResponse:
    """The answer to one InferenceRequest: the version that computed it and its outputs."""

    __slots__ = ("id", "model", "outputs", "version")

    def __init__(self, model: str, version: str, request_id: str, outputs: list[OutputTensor]):
        self.model = model
        self.version = version
        self.id = request_id
        self.outputs = outputs


class RequestLimits:
    """The server's limits on one request (max_images_per_request, max_decoded_pixels)."""

    __slots__ = ("max_decoded_pixels", "max_rows")

    def __init__(self, max_rows: int, max_decoded_pixels: int) -> None:
        self.max_rows = max_rows
        self.max_decoded_pixels = max_decoded_pixels


def requested_output(name: str, classification: object = None) -> RequestedOutput:
    """An output the caller asked for; `classification` is its class count as sent (None
    when the parameter is absent): an integer >= 1, on every transport."""
    if classification is None:
        return RequestedOutput(name)
    if not isinstance(classification, int) or isinstance(classification, bool):
        raise InvalidInputError(
            f"output {name!r}: parameter {CLASSIFICATION_PARAMETER!r} must be an integer "
            f"number of classes >= 1, got {type(classification).__name__} {classification!r}"
        )
    if classification < 1:
        raise InvalidInputError(
            f"output {name!r}: parameter {CLASSIFICATION_PARAMETER!r} must be an integer "
            f"number of classes >= 1, got {classification}"
        )
    return RequestedOutput(name, classification)


def queue_timeout_s(request: InferenceRequest) -> float | None:
    return queue_timeout_from_micros(request.timeout, TIMEOUT_PARAMETER)


def select_outputs(
    request: InferenceRequest, model_outputs: Sequence[str]
) -> tuple[RequestedOutput, ...] | None:
    if not request.outputs:
        return None
    return check_requested_outputs(request.outputs, model_outputs)


def decode_input(tensor: InputTensor, spec: TensorSpec, limits: RequestLimits) -> npt.NDArray[Any]:
    """The input as the model takes it ([n, ...], n >= 1); InvalidInputError if malformed.

    A BYTES input to a UINT8 image model is a batch of PNG/JPEG files (core.tensors)."""
    name = tensor.name
    _check_one_payload(tensor)
    if takes_encoded(spec, tensor.datatype):
        if tensor.raw is not None:
            elements: Sequence[bytes] = split_bytes_elements(tensor.raw, name)
        elif tensor.elements is not None:
            elements = tensor.elements
        else:
            raise InvalidInputError(f"input {name!r}: BYTES data must be strings, not numbers")
        return encoded_images(
            spec,
            name,
            tensor.shape,
            elements,
            max_rows=limits.max_rows,
            max_decoded_pixels=limits.max_decoded_pixels,
        )
    plan = plan_input(spec, name, tensor.datatype, tensor.shape, max_rows=limits.max_rows)
    if tensor.raw is not None:
        wire = plan.wire_dtype
        expected = plan.values * wire.itemsize
        if len(tensor.raw) != expected:
            raise InvalidInputError(
                f"input {name!r}: the raw data holds {len(tensor.raw)} bytes, expected "
                f"{expected} bytes for {tensor.datatype} shape {format_shape(tensor.shape)}"
            )
        # A view of the message's bytes: no copy (read-only, which the runtime only reads).
        return to_model_array(np.frombuffer(tensor.raw, dtype=wire), plan)
    if tensor.values is None:
        raise InvalidInputError(
            f"input {name!r}: {tensor.datatype} data must be numbers, not strings"
        )
    flat = typed_values(
        tensor.values,
        name,
        tensor.datatype,
        plan.values,
        booleans_possible=tensor.booleans_possible,
    )
    return to_model_array(flat, plan)


def _check_one_payload(tensor: InputTensor) -> None:
    given = (tensor.raw is not None) + (tensor.values is not None) + (tensor.elements is not None)
    if given == 0:
        raise InvalidInputError(f"input {tensor.name!r} carries no data")
    if given > 1:
        raise InvalidInputError(
            f"input {tensor.name!r}: both typed contents and raw data are set; send one"
        )


def typed_values(
    values: Sequence[Any], name: str, datatype: str, count: int, *, booleans_possible: bool = True
) -> npt.NDArray[Any]:
    """Typed values (flat or nested lists) -> a flat array of `count` values; every value of
    the datatype's kind (no booleans or strings as numbers, no numbers as booleans)."""
    allowed, gathered = _TYPED[datatype]
    flat = flatten_values(values)
    if len(flat) != count:
        raise InvalidInputError(
            f"input {name!r}: holds {len(flat)} values, expected {count} for {datatype}"
        )
    if datatype == UINT8 and not booleans_possible:
        # The common case (pixels): bytes() takes ints in [0, 255] in C, several times faster
        # than numpy's list conversion, and refuses floats, strings and None itself; only a
        # boolean would pass as 0 or 1, which is why the wire must rule those out first.
        try:
            return np.frombuffer(bytes(flat), dtype=np.uint8)
        except (TypeError, ValueError):
            pass  # the general path names the value
    kinds = set(map(type, flat))
    if not kinds <= allowed:
        wrong = next(type(v).__name__ for v in flat if type(v) not in allowed)
        expected = " or ".join(sorted(t.__name__ for t in allowed))
        raise InvalidInputError(
            f"input {name!r}: {datatype} values must be JSON/protobuf {expected} values, "
            f"got a {wrong}"
        )
    try:
        return np.asarray(flat, dtype=gathered)
    except OverflowError:
        raise InvalidInputError(f"input {name!r}: a value does not fit {datatype}") from None


def flatten_values(values: Sequence[Any]) -> Sequence[Any]:
    """Nested lists (a JSON tensor in its shape) -> one flat list; a flat list as it is, and
    any other sequence (a protobuf repeated field) as a list."""
    if not isinstance(values, list):
        return list(values)
    if not values or not isinstance(values[0], list):
        return values
    flat: list[Any] = []
    stack: list[Any] = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def encode_outputs(
    computed: Mapping[str, npt.NDArray[Any]],
    requested: Sequence[RequestedOutput] | None,
    labels: Sequence[str],
) -> list[OutputTensor]:
    """The reply's outputs in wire form: every output (none requested), else the requested
    ones in request order, classification outputs as Triton's class strings."""
    outputs = []
    for name, array in answer_outputs(computed, requested, labels).items():
        if array.dtype == np.object_:
            outputs.append(OutputTensor(name, BYTES, array))
            continue
        datatype = _OUTPUT_DATATYPES.get(array.dtype)
        if datatype is None:
            # The model's outputs are fixed at load time; this is a bug, not bad input.
            raise TypeError(f"output {name!r} has dtype {array.dtype}, which has no V2 encoding")
        wire = WIRE_DTYPES[datatype]
        outputs.append(OutputTensor(name, datatype, array.astype(wire, copy=False)))
    return outputs
