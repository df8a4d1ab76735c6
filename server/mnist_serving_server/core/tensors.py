"""Request tensors checked against the model's own contract, whatever the transport.

A transport hands over the datatype and shape the client declared and the values as a
flat numpy array; `InputPlan` checks them against the graph's input (name, datatype,
shape with a dynamic batch dimension) and `to_model_array` turns them into the array the
batcher takes. Every malformed request raises InvalidInputError naming what was expected.

Besides the model's own datatype, a UINT8 input also takes FP32 values in [0,1] (the
torchvision `ToTensor` convention, pixel / 255), converted with `round(x * 255)`, so
`x = k/255` gives exactly `k`. Size-1 dimensions of the model's shape may be left out
(`[N,28,28]` for a `[N,1,28,28]` input).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.runtime import DYNAMIC_DIM, TensorSpec

UINT8: Final = "UINT8"
FP32: Final = "FP32"
BYTES: Final = "BYTES"
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
