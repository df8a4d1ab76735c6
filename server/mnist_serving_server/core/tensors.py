"""Request tensors checked against the model's own contract, whatever the transport.

A transport hands over the datatype and shape the client declared and the values as a
flat numpy array; `InputPlan` checks them against the graph's input (name, datatype,
shape with a dynamic batch dimension) and `to_model_array` turns them into the array the
batcher takes. Every malformed request raises InvalidInputError naming what was expected.

Besides the model's own datatype, a UINT8 input also takes FP32 values in [0,1] (the
torchvision `ToTensor` convention, pixel / 255), converted with `round(x * 255)`, so
`x = k/255` gives exactly `k`. Size-1 dimensions of the model's shape may be left out
(`[N,28,28]` for a `[N,1,28,28]` input).

A UINT8 image input (fixed `[N,H,W]` or `[N,1,H,W]`) also takes a BYTES tensor `[N]` (or
`[N,1]`) of PNG/JPEG files: each is prepared by `encoded_image`, the same function
Classify's `encoded` images go through, so every transport has one image path.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.images import decode_image
from mnist_serving_server.core.runtime import DYNAMIC_DIM, TensorSpec

UINT8: Final = "UINT8"
FP32: Final = "FP32"
BYTES: Final = "BYTES"
MICROSECONDS_PER_SECOND: Final = 1_000_000
MAX_PIXEL: Final = 255
"""The largest uint8 value; FP32 values for a UINT8 input are scaled by it."""

# V2 datatype -> numpy dtype of its little-endian wire form (BYTES has none).
WIRE_DTYPES: Final[Mapping[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


class InputPlan:
    """A request tensor accepted for the model's input: how many rows and how to convert.

    A plain class with __slots__: one is built per request (a frozen dataclass costs more).
    """

    __slots__ = ("datatype", "shape", "spec")

    def __init__(self, spec: TensorSpec, datatype: str, shape: tuple[int, ...]) -> None:
        self.spec = spec
        self.datatype = datatype
        """What the client sent (the model's datatype, or FP32 for a UINT8 input)."""
        self.shape = shape
        """The model-shaped array the values become ([n, ...] in the graph's rank)."""

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def values(self) -> int:
        return math.prod(self.shape)

    @property
    def wire_dtype(self) -> np.dtype[Any]:
        return WIRE_DTYPES[self.datatype]


def describe_input(spec: TensorSpec) -> str:
    """What the model takes, for error messages: 'UINT8 [N,1,28,28]' (+ the FP32 option)."""
    dims = ",".join(
        "N" if i == 0 else ("?" if d == DYNAMIC_DIM else str(d)) for i, d in enumerate(spec.shape)
    )
    text = f"{spec.datatype} [{dims}]"
    if spec.datatype == UINT8:
        text += " (or FP32 in [0,1], value/255)"
    return text


def plan_input(
    spec: TensorSpec, name: str, datatype: str, shape: Sequence[int], *, max_rows: int
) -> InputPlan:
    """Check one request tensor's name, datatype and shape against the model's input."""
    if name != spec.name:
        raise InvalidInputError(f"unknown input {name!r}; {_expected(spec)}")
    if datatype != spec.datatype and not (spec.datatype == UINT8 and datatype == FP32):
        raise InvalidInputError(
            f"input {name!r}: datatype {datatype!r} is not accepted; {_expected(spec)}"
        )
    dims = tuple(shape)
    model_shape = _model_shape(spec, dims)
    if model_shape is None:
        raise InvalidInputError(
            f"input {name!r}: shape {format_shape(dims)} is not accepted; {_expected(spec)}"
        )
    if model_shape[0] < 1:
        raise InvalidInputError(
            f"input {name!r}: shape {format_shape(dims)} holds no batch entry; N must be >= 1"
        )
    if model_shape[0] > max_rows:
        raise InvalidInputError(
            f"input {name!r}: batch of {model_shape[0]} is too large; at most {max_rows} per "
            "request (max_images_per_request): split it into several requests"
        )
    return InputPlan(spec=spec, datatype=datatype, shape=model_shape)


def _expected(spec: TensorSpec) -> str:
    """Built only for an error message: plan_input runs on every request."""
    return f"the model takes one input {spec.name!r}: {describe_input(spec)}"


def _model_shape(spec: TensorSpec, dims: tuple[int, ...]) -> tuple[int, ...] | None:
    """The request's dims in the graph's rank, or None when they do not fit."""
    graph = spec.shape[1:]
    if any(d < 0 for d in dims) or not dims:
        return None
    if len(dims) - 1 == len(graph):
        if all(g in (DYNAMIC_DIM, d) for g, d in zip(graph, dims[1:], strict=True)):
            return dims
        return None
    # Size-1 dimensions left out: only when every other dimension is fixed.
    fixed = tuple(g for g in graph if g != 1)
    if DYNAMIC_DIM not in graph and dims[1:] == fixed:
        return (dims[0], *graph)
    return None


def to_model_array(flat: npt.NDArray[Any], plan: InputPlan) -> npt.NDArray[Any]:
    """Flat values (already `plan.values` long) -> the model's dtype and shape."""
    spec = plan.spec
    if plan.datatype != spec.datatype:  # FP32 values for a UINT8 input
        flat = _fp32_to_uint8(flat.astype(np.float32, copy=False), spec.name)
    elif flat.dtype != spec.numpy_dtype:
        flat = _narrow(flat, spec)
    return flat.reshape(plan.shape)


def _narrow(flat: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[Any]:
    """Typed integers travel widened (uint32 for UINT8): every value must fit the model's."""
    target = spec.numpy_dtype
    if target.kind in "iu":
        limits = np.iinfo(target)
        bad = np.flatnonzero((flat < limits.min) | (flat > limits.max))
        if bad.size:
            index = int(bad[0])
            raise InvalidInputError(
                f"input {spec.name!r}: {spec.datatype} values must be in "
                f"[{limits.min}, {limits.max}], got {flat[index]} at element {index}"
            )
    return flat.astype(target)


def _fp32_to_uint8(flat: npt.NDArray[np.float32], name: str) -> npt.NDArray[np.uint8]:
    # One vectorised range test also catches NaN (every comparison with NaN is false).
    in_range = (flat >= 0.0) & (flat <= 1.0)
    if not bool(in_range.all()):
        index = int(np.flatnonzero(~in_range)[0])
        raise InvalidInputError(
            f"input {name!r}: FP32 values must be finite and in [0,1] (value/255, the "
            f"torchvision ToTensor convention; normalisation happens inside the model), got "
            f"{flat[index]!s} at element {index}; send 0-255 values as UINT8"
        )
    scaled = np.multiply(flat, np.float32(MAX_PIXEL), dtype=np.float32)
    # Nearest, not truncation: fl32(k/255) * 255 may land a hair below k.
    return np.rint(scaled, out=scaled).astype(np.uint8)


_BYTES_LENGTH: Final = struct.Struct("<I")


def encoded_image(
    data: bytes, image_shape: Sequence[int], *, max_decoded_pixels: int, where: str
) -> npt.NDArray[np.uint8]:
    """One PNG/JPEG -> the model's image (flattened); `where` names it in errors.

    The one image path: Classify's `encoded` images and V2 BYTES inputs, on every transport.
    """
    try:
        decoded = decode_image(data, max_pixels=max_decoded_pixels, size=tuple(image_shape)[-2:])
    except InvalidInputError as exc:
        raise InvalidInputError(f"{where}: {exc}") from None
    return decoded.ravel()


def image_shape_of(spec: TensorSpec) -> tuple[int, ...] | None:
    """One image as a UINT8 image input takes it ((1,H,W) or (H,W)); None for other inputs."""
    image = spec.shape[1:]
    if spec.datatype != UINT8 or DYNAMIC_DIM in image:
        return None
    if len(image) == 2 or (len(image) == 3 and image[0] == 1):
        return tuple(image)
    return None


def takes_encoded(spec: TensorSpec, datatype: str) -> bool:
    """Whether a tensor of `datatype` for `spec` is a batch of encoded images."""
    return datatype == BYTES and image_shape_of(spec) is not None


def encoded_images(
    spec: TensorSpec,
    name: str,
    shape: Sequence[int],
    elements: Sequence[bytes],
    *,
    max_rows: int,
    max_decoded_pixels: int,
) -> npt.NDArray[np.uint8]:
    """A BYTES tensor `[N]` or `[N,1]` of PNG/JPEG files -> the model's uint8 `[N, ...]`."""
    image_shape = image_shape_of(spec)
    if name != spec.name:
        raise InvalidInputError(f"unknown input {name!r}; {_expected(spec)}")
    if image_shape is None:
        raise InvalidInputError(
            f"input {name!r}: datatype 'BYTES' is not accepted; {_expected(spec)}"
        )
    dims = tuple(shape)
    if not (len(dims) == 1 or (len(dims) == 2 and dims[1] == 1)) or dims[0] < 1:
        raise InvalidInputError(
            f"input {name!r}: a BYTES input holds one PNG/JPEG per image, shape [N] or [N,1] "
            f"with N >= 1; got {format_shape(dims)}"
        )
    count = dims[0]
    if count > max_rows:
        raise InvalidInputError(
            f"input {name!r}: batch of {count} is too large; at most {max_rows} per "
            "request (max_images_per_request): split it into several requests"
        )
    if len(elements) != count:
        raise InvalidInputError(
            f"input {name!r}: holds {len(elements)} BYTES elements, expected {count} for "
            f"shape {format_shape(dims)}"
        )
    pixels = np.empty((count, math.prod(image_shape)), dtype=np.uint8)
    for index, data in enumerate(elements):
        pixels[index] = encoded_image(
            data, image_shape, max_decoded_pixels=max_decoded_pixels, where=f"{name}[{index}]"
        )
    return pixels.reshape(count, *image_shape)


def split_bytes_elements(buffer: bytes | memoryview, name: str) -> list[bytes]:
    """V2's binary form of a BYTES tensor (each element: 4-byte little-endian length, then
    its bytes) -> the elements; InvalidInputError when the lengths do not add up."""
    view = memoryview(buffer)
    elements: list[bytes] = []
    offset = 0
    end = len(view)
    while offset < end:
        if offset + 4 > end:
            raise InvalidInputError(f"input {name!r}: BYTES data ends inside a length prefix")
        (length,) = _BYTES_LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > end:
            raise InvalidInputError(
                f"input {name!r}: a BYTES element of {length} bytes runs past the data's end"
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    return elements


def join_bytes_elements(array: npt.NDArray[Any]) -> bytes:
    """The binary form of a BYTES array (the inverse of `split_bytes_elements`)."""
    return b"".join(_BYTES_LENGTH.pack(len(item)) + item for item in array.ravel().tolist())


class RequestedOutput:
    """An output to return; `class_count` > 0 answers it as Triton's classification."""

    __slots__ = ("class_count", "name")

    def __init__(self, name: str, class_count: int = 0) -> None:
        self.name = name
        self.class_count = class_count

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RequestedOutput)
            and other.name == self.name
            and other.class_count == self.class_count
        )

    def __hash__(self) -> int:
        return hash((self.name, self.class_count))

    def __repr__(self) -> str:
        return f"RequestedOutput({self.name!r}, {self.class_count})"


def check_requested_outputs(
    selected: Sequence[RequestedOutput], model_outputs: Sequence[str]
) -> tuple[RequestedOutput, ...]:
    """The requested outputs, checked: each one the model has, none twice."""
    for output in selected:
        if output.name not in model_outputs:
            raise InvalidInputError(
                f"unknown output {output.name!r}; the model's outputs are "
                + ", ".join(f"{known!r}" for known in model_outputs)
            )
    names = [output.name for output in selected]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"an output is requested more than once: {names}")
    return tuple(selected)


def answer_outputs(
    outputs: Mapping[str, npt.NDArray[Any]],
    requested: Sequence[RequestedOutput] | None,
    labels: Sequence[str],
) -> Mapping[str, npt.NDArray[Any]]:
    """What a V2 reply carries: every output (None requested), else the requested ones in
    request order, classification outputs as Triton's class strings."""
    if requested is None:
        return outputs
    return {
        output.name: classification(outputs[output.name], output.class_count, labels)
        if output.class_count
        else outputs[output.name]
        for output in requested
    }


def queue_timeout_from_micros(micros: object, name: str) -> float | None:
    """Triton's `timeout` request parameter (int microseconds) in seconds; None when 0/absent."""
    if micros is None:
        return None
    if not isinstance(micros, int) or isinstance(micros, bool):
        raise InvalidInputError(
            f"parameter {name!r} must be an int64 number of microseconds, got {micros!r}"
        )
    if micros < 0:
        raise InvalidInputError(f"parameter {name!r} must be >= 0 microseconds, got {micros}")
    return None if micros == 0 else micros / MICROSECONDS_PER_SECOND


def classification(
    scores: npt.NDArray[Any], class_count: int, labels: Sequence[str]
) -> npt.NDArray[np.object_]:
    """Triton's classification extension: the `class_count` best classes of each row of
    `scores` [n, classes] as b"<score>:<index>[:<label>]", shape [n, class_count]."""
    if scores.ndim != 2:
        raise InvalidInputError(
            f"classification needs an output of shape [N, classes], this one is "
            f"{format_shape(scores.shape)}"
        )
    count = min(class_count, scores.shape[1])
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :count]
    rows: list[list[bytes]] = []
    for row, order in zip(scores.tolist(), ranked.tolist(), strict=True):
        rows.append(
            [
                (f"{row[i]:f}:{i}:{labels[i]}" if i < len(labels) else f"{row[i]:f}:{i}").encode()
                for i in order
            ]
        )
    result = np.empty((len(rows), count), dtype=np.object_)
    result[:] = rows
    return result


def format_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"
