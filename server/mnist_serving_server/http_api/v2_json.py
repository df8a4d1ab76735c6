"""KServe V2 JSON and Triton's binary tensor data extension <-> the core's InferenceRequest
and InferenceResponse.

Only the wire form lives here (docs/v2_protocol.md): the JSON document, `data` (flat or
nested), `binary_data_size` slices of the body after `Inference-Header-Content-Length`
bytes of JSON, binary outputs. What the values mean, and whether the model takes them, is
decided in `core.inference`, the same for every transport.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import orjson

from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.inference import (
    CLASSIFICATION_PARAMETER,
    TIMEOUT_PARAMETER,
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    flatten_values,
    malformed,
    requested_output,
)
from mnist_serving_server.core.tensors import BYTES

BINARY_DATA_SIZE: Final = "binary_data_size"
BINARY_DATA: Final = "binary_data"
BINARY_DATA_OUTPUT: Final = "binary_data_output"


class HttpInferRequest:
    """One parsed POST .../infer: the core's request, and which outputs go back in binary."""

    __slots__ = ("binary_output", "request")

    def __init__(self, request: InferenceRequest, binary_output: frozenset[str] | bool) -> None:
        self.request = request
        self.binary_output = binary_output
        """True: every output in binary; else the names asked for in binary."""


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be a JSON object")
    return value


def _parameters(value: Mapping[str, Any], what: str) -> dict[str, Any]:
    parameters = value.get("parameters")
    if parameters is None:
        return {}
    return _object(parameters, f"{what}.parameters")


def parse_json(document: bytes | memoryview, what: str = "the request body") -> Any:
    try:
        return orjson.loads(document)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"{what} is not valid JSON: {exc}") from None


def parse_infer_request(
    body: bytes, header_length: str | None, model: str, version: str
) -> HttpInferRequest:
    """The body of POST .../infer (JSON, or JSON + binary tensors; `header_length` is the
    Inference-Header-Content-Length header) -> the core's request; a malformed body still
    names the model, which the core resolves first (`malformed`)."""
    try:
        return _parse(body, header_length, model, version)
    except InvalidInputError as error:
        return HttpInferRequest(malformed(model, version, error), False)


def _parse(body: bytes, header: str | None, model: str, version: str) -> HttpInferRequest:
    view = memoryview(body)
    header_length = _header_length(header)
    if header_length is None:
        json_part, binary = view, view[:0]
    else:
        if header_length < 0 or header_length > len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length is {header_length}, the body holds "
                f"{len(body)} bytes"
            )
        json_part, binary = view[:header_length], view[header_length:]
    document = _object(parse_json(json_part), "the inference request")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        count = len(inputs) if isinstance(inputs, list) else 0
        raise InvalidInputError(
            f"expected exactly one input in `inputs`, got {count}; the model takes one input"
        )
    # Booleans can only be among the values where the document spells one (core.inference).
    end = len(json_part)  # the JSON is body[:end]; memoryview has no substring search
    booleans = body.find(b"true", 0, end) >= 0 or body.find(b"false", 0, end) >= 0
    input_tensor, binary_used = _input(_object(inputs[0], "inputs[0]"), binary, booleans)
    if binary_used != len(binary):
        raise InvalidInputError(
            f"the body holds {len(binary)} bytes of binary tensor data, the inputs' "
            f"{BINARY_DATA_SIZE} add up to {binary_used}"
        )
    parameters = _parameters(document, "the request")
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInputError("`id` must be a string")
    binary_all = parameters.get(BINARY_DATA_OUTPUT, False)
    if not isinstance(binary_all, bool):
        raise InvalidInputError(f"parameter {BINARY_DATA_OUTPUT!r} must be a boolean")
    outputs, binary_names = _requested_outputs(document.get("outputs"))
    request = InferenceRequest(
        model,
        version,
        input_tensor,
        request_id=request_id,
        outputs=outputs,
        timeout=parameters.get(TIMEOUT_PARAMETER),
    )
    return HttpInferRequest(request, True if binary_all else binary_names)


def _header_length(header: str | None) -> int | None:
    if header is None:
        return None
    try:
        return int(header)
    except ValueError:
        raise InvalidInputError("Inference-Header-Content-Length is not a number") from None


def _input(
    tensor: Mapping[str, Any], binary: memoryview, booleans_possible: bool
) -> tuple[InputTensor, int]:
    """The input tensor, and how many bytes of the binary part it takes."""
    name = tensor.get("name")
    datatype = tensor.get("datatype")
    shape = tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidInputError("inputs[0] needs a string `name` and `datatype`")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInputError(f"input {name!r}: `shape` must be a list of integers")
    size = _parameters(tensor, f"input {name!r}").get(BINARY_DATA_SIZE)
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidInputError(f"input {name!r}: {BINARY_DATA_SIZE} must be an integer >= 0")
    data = tensor.get("data")
    if size is not None:
        if data is not None:
            raise InvalidInputError(f"input {name!r}: both `data` and {BINARY_DATA_SIZE}; send one")
        if size > len(binary):
            raise InvalidInputError(
                f"input {name!r}: {BINARY_DATA_SIZE} is {size}, the body holds {len(binary)} "
                "bytes of binary data"
            )
        return InputTensor(name, datatype, shape, raw=binary[:size]), size
    if data is None:
        return InputTensor(name, datatype, shape), 0
    if not isinstance(data, list):
        raise InvalidInputError(f"input {name!r}: `data` must be a (flat or nested) JSON list")
    if datatype == BYTES:
        return InputTensor(name, datatype, shape, elements=_json_bytes(data, name)), 0
    return InputTensor(name, datatype, shape, values=data, booleans_possible=booleans_possible), 0


def _json_bytes(data: list[Any], name: str) -> list[bytes]:
    """BYTES `data` (strings, flat or nested) -> the elements."""
    flat = flatten_values(data)
    for item in flat:
        if not isinstance(item, str):
            raise InvalidInputError(
                f"input {name!r}: BYTES `data` must hold strings, got a {type(item).__name__}"
            )
    return [item.encode() for item in flat]


def _requested_outputs(outputs: Any) -> tuple[list[Any], frozenset[str]]:
    if outputs is None:
        return [], frozenset()
    if not isinstance(outputs, list):
        raise InvalidInputError("`outputs` must be a list")
    selected = []
    binary: set[str] = set()
    for index, item in enumerate(outputs):
        output = _object(item, f"outputs[{index}]")
        name = output.get("name")
        if not isinstance(name, str):
            raise InvalidInputError(f"outputs[{index}] needs a string `name`")
        parameters = _parameters(output, f"output {name!r}")
        if parameters.get(BINARY_DATA) is True:
            binary.add(name)
        selected.append(requested_output(name, parameters.get(CLASSIFICATION_PARAMETER)))
    return selected, frozenset(binary)


def encode_response(
    response: InferenceResponse, binary_output: frozenset[str] | bool
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON part's length."""
    described: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for output in response.outputs:
        name = output.name
        entry: dict[str, Any] = {"name": name, "datatype": output.datatype, "shape": output.shape}
        if binary_output is True or name in binary_output:  # type: ignore[operator]
            blob = output.wire_bytes()
            entry["parameters"] = {BINARY_DATA_SIZE: len(blob)}
            blobs.append(blob)
        elif output.datatype == BYTES:
            entry["data"] = [
                item.decode("utf-8", "replace") for item in output.array.ravel().tolist()
            ]
        else:
            entry["data"] = output.array.ravel()
        described.append(entry)
    document: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id:
        document["id"] = response.id
    document["outputs"] = described
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
