"""The HTTP wire form (V2 JSON + Triton's binary extension) and the HTTP error table."""

from __future__ import annotations

import json
import struct
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from mnist_serving_server.core import inference
from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.inference import InferenceResponse, RequestLimits
from mnist_serving_server.core.runtime import TensorSpec
from mnist_serving_server.core.tensors import (
    RequestedOutput,
    join_bytes_elements,
    split_bytes_elements,
)
from mnist_serving_server.http_api.v2_json import encode_response, parse_infer_request

pytestmark = pytest.mark.unit

SPEC = TensorSpec("pixels", "UINT8", np.dtype(np.uint8), (-1, 1, 28, 28))
OUTPUTS = ("probabilities", "logits")


def parse(document: dict[str, Any], binary: bytes = b"") -> Any:
    """The HTTP front's parse, then the core's checks and conversion, as /infer runs them."""
    header = json.dumps(document).encode()
    parsed = parse_infer_request(header + binary, str(len(header)) if binary else None, "mnist", "")
    request = parsed.request
    if request.invalid is not None:  # raised by the core once the model is resolved
        raise request.invalid
    return SimpleNamespace(
        array=inference.decode_input(request.input, SPEC, RequestLimits(16, 1 << 20)),
        id=request.id,
        timeout_s=inference.queue_timeout_s(request),
        requested=inference.select_outputs(request, OUTPUTS),
        binary_output=parsed.binary_output,
    )


def tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 28, 28], **fields}


def test_flat_nested_and_binary_give_the_same_array() -> None:
    pixels = np.arange(784, dtype=np.int64) % 256
    flat = parse({"inputs": [tensor(data=pixels.tolist())]}).array
    nested = parse({"inputs": [tensor(data=pixels.reshape(1, 1, 28, 28).tolist())]}).array
    size = {"binary_data_size": 784}
    binary = parse({"inputs": [tensor(parameters=size)]}, pixels.astype(np.uint8).tobytes()).array
    assert flat.dtype == nested.dtype == binary.dtype == np.uint8
    assert flat.shape == (1, 1, 28, 28)
    assert np.array_equal(flat, nested)
    assert np.array_equal(flat, binary)


@pytest.mark.parametrize(
    ("document", "binary", "message"),
    [
        ({"inputs": [tensor(data=[0] * 783)]}, b"", "holds 783 values"),
        ({"inputs": [tensor(data=[0] * 783 + [300])]}, b"", "[0, 255]"),
        ({"inputs": [tensor(data=[0] * 783 + [-1])]}, b"", "[0, 255]"),
        ({"inputs": [tensor(parameters={"binary_data_size": 700})]}, b"\0" * 700, "expected 784"),
        ({"inputs": [tensor(parameters={"binary_data_size": 784})]}, b"\0" * 800, "add up"),
        ({"inputs": [tensor(data=[0] * 784)], "id": 7}, b"", "`id`"),
        ({"inputs": [tensor(data=[0] * 784)], "outputs": [{"name": "x"}]}, b"", "unknown output"),
        ({"inputs": [tensor(data=[0] * 784)], "parameters": {"timeout": -1}}, b"", ">= 0"),
        ({"inputs": [tensor(data=[0] * 784), tensor(data=[0] * 784)]}, b"", "exactly one"),
        # Typed values are checked by the core, as over gRPC: no booleans or strings as pixels.
        ({"inputs": [tensor(data=[True] + [0] * 783)]}, b"", "got a bool"),
        ({"inputs": [tensor(data=["7"] + [0] * 783)]}, b"", "got a str"),
        ({"inputs": [tensor(data=[[0.5] * 28] * 28)]}, b"", "got a float"),
        ({"inputs": [tensor()]}, b"", "carries no data"),
        (
            {
                "inputs": [tensor(data=[0] * 784)],
                "outputs": [{"name": "logits", "parameters": {"classification": 0}}],
            },
            b"",
            "classes >= 1, got 0",
        ),
    ],
)
def test_malformed_requests_name_the_problem(
    document: dict[str, Any], binary: bytes, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse(document, binary)


def test_outputs_binary_flags_classification_and_timeout() -> None:
    request = parse(
        {
            "id": "a",
            "parameters": {"timeout": 2_000_000},
            "inputs": [tensor(data=[0] * 784)],
            "outputs": [
                {"name": "logits", "parameters": {"binary_data": True}},
                {"name": "probabilities", "parameters": {"classification": 2}},
            ],
        }
    )
    assert request.id == "a"
    assert request.timeout_s == 2.0
    assert request.requested == (RequestedOutput("logits"), RequestedOutput("probabilities", 2))
    assert request.binary_output == frozenset({"logits"})


def test_binary_response_keeps_request_order() -> None:
    request = parse(
        {"inputs": [tensor(data=[0] * 784)], "parameters": {"binary_data_output": True}}
    )
    first = np.arange(3, dtype=np.float32).reshape(1, 3)
    second = np.array([[b"0.9:1:one"]], dtype=np.object_)
    outputs = inference.encode_outputs({"a": first, "b": second}, None, ())
    body, length = encode_response(InferenceResponse("m", "1", "", outputs), request.binary_output)
    assert length is not None
    document = json.loads(body[:length])
    assert [o["name"] for o in document["outputs"]] == ["a", "b"]
    assert document["outputs"][0]["parameters"]["binary_data_size"] == 12
    rest = body[length:]
    assert rest[:12] == first.tobytes()
    assert split_bytes_elements(rest[12:], "b") == [b"0.9:1:one"]


def test_bytes_elements_round_trip_and_truncation() -> None:
    items = [b"", b"abc", bytes(300)]
    joined = join_bytes_elements(np.array(items, dtype=np.object_))
    assert joined[:4] == struct.pack("<I", 0)
    assert split_bytes_elements(joined, "x") == items
    with pytest.raises(InvalidInputError, match="past the data's end"):
        split_bytes_elements(joined[:-1], "x")
    with pytest.raises(InvalidInputError, match="length prefix"):
        split_bytes_elements(b"\1\0", "x")


def test_pixels_take_the_same_checks_whether_or_not_the_document_spells_a_boolean() -> None:
    # "true" in a string sends the values through the full type scan; the answer is the same.
    pixels = list(range(256)) * 3 + [0] * 16
    plain = parse({"inputs": [tensor(data=pixels)]}).array
    spelled = parse({"id": "true", "inputs": [tensor(data=pixels)]}).array
    assert np.array_equal(plain, spelled)
    with pytest.raises(InvalidInputError, match="got a float"):
        parse({"inputs": [tensor(data=[0.0, *pixels[1:]])]})


@pytest.mark.parametrize("bad", [None, 7, True, {"a": 1}])
def test_bytes_data_holds_strings_only(bad: Any) -> None:
    document = {
        "inputs": [{"name": "pixels", "datatype": "BYTES", "shape": [2], "data": [["x"], [bad]]}]
    }
    with pytest.raises(InvalidInputError, match="BYTES `data` must hold strings, got a"):
        parse(document)
