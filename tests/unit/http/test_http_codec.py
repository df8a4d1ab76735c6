"""The HTTP wire form (V2 JSON + Triton's binary extension) and the HTTP error table."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from mnist_serving_server.core import errors
from mnist_serving_server.core.errors import InvalidInputError, ServingError
from mnist_serving_server.core.runtime import TensorSpec
from mnist_serving_server.core.tensors import (
    RequestedOutput,
    join_bytes_elements,
    split_bytes_elements,
)
from mnist_serving_server.http_api import http_errors
from mnist_serving_server.http_api.v2_json import encode_response, parse_infer_request

pytestmark = pytest.mark.unit

SPEC = TensorSpec("pixels", "UINT8", np.dtype(np.uint8), (-1, 1, 28, 28))
OUTPUTS = ("probabilities", "logits")


def parse(document: dict[str, Any], binary: bytes = b"") -> Any:
    header = json.dumps(document).encode()
    return parse_infer_request(
        header + binary,
        len(header) if binary else None,
        SPEC,
        OUTPUTS,
        max_rows=16,
        max_decoded_pixels=1 << 20,
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
    body, length = encode_response("m", "1", request, {"a": first, "b": second})
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


def test_every_serving_error_has_an_http_status() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, ServingError) and value is not ServingError
    ]
    for cls in classes:
        status, code, message = http_errors.status_for(cls("why"))
        assert status != 500, cls
        assert message == "why"
        assert code in http_errors.CODE_NAMES.values() or code == "FAILED_PRECONDITION"
    status, code, message = http_errors.status_for(RuntimeError("secret detail"))
    assert (status, code) == (500, "INTERNAL")
    assert "secret" not in message
