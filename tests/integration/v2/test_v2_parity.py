"""One corpus of KServe V2 requests, sent over gRPC and over HTTP to one real server: the same
status kind each time (INVALID_ARGUMENT <-> 400, NOT_FOUND <-> 404, ...), and where both
succeed, equal outputs, ids and versions. Both fronts hand the core the same request
(core.inference), so a difference here is a front that decides something itself."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.config import DEFAULT_MAX_IMAGES_PER_REQUEST
from tests.integration.conftest import StartApp
from tests.integration.http.http_support import Answer, bytes_elements, call, png_of

pytestmark = pytest.mark.integration

# The HTTP status each gRPC code of the error model is answered with (docs/v2_protocol.md).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
CALL_TIMEOUT_S = 30.0
RNG = np.random.default_rng(20261203)
IMAGES = RNG.integers(0, 256, (DEFAULT_MAX_IMAGES_PER_REQUEST + 1, 28, 28), dtype=np.uint8)


@dataclass
class Case:
    """One request, said once: `encoding` is how its input travels ("raw": gRPC's
    raw_input_contents and HTTP's binary extension; "typed": gRPC's contents and JSON)."""

    name: str
    datatype: str = "UINT8"
    shape: list[int] = field(default_factory=lambda: [1, 1, 28, 28])
    values: list[Any] | None = None
    raw: bytes | None = None
    elements: list[bytes] | None = None
    model: str = "mnist"
    version: str = ""
    input_name: str = "pixels"
    inputs: int = 1
    outputs: list[tuple[str, Any]] = field(default_factory=list)
    request_id: str = ""
    timeout: Any = None
    expected: grpc.StatusCode = grpc.StatusCode.OK


def pixels(count: int) -> np.ndarray:
    return IMAGES[:count]


def typed(count: int, **fields: Any) -> Case:
    name = fields.pop("name", f"typed uint8 x{count}")
    shape = fields.pop("shape", [count, 1, 28, 28])
    return Case(name, shape=shape, values=pixels(count).ravel().tolist(), **fields)


def raw(count: int, **fields: Any) -> Case:
    name = fields.pop("name", f"raw uint8 x{count}")
    shape = fields.pop("shape", [count, 1, 28, 28])
    return Case(name, shape=shape, raw=pixels(count).tobytes(), **fields)


FP32 = (pixels(2).astype(np.float32) / np.float32(255)).ravel()
PNGS = [png_of(image) for image in pixels(3)]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

CORPUS = [
    # --- valid: encodings, datatypes, shapes, batch sizes, outputs, ids, versions ---------
    raw(1),
    raw(5, shape=[5, 28, 28]),
    raw(DEFAULT_MAX_IMAGES_PER_REQUEST),
    typed(1),
    typed(3, shape=[3, 28, 28]),
    Case("raw fp32", datatype="FP32", shape=[2, 1, 28, 28], raw=FP32.astype("<f4").tobytes()),
    Case("typed fp32", datatype="FP32", shape=[2, 28, 28], values=FP32.tolist()),
    Case("raw png", datatype="BYTES", shape=[3], raw=bytes_elements(PNGS)),
    Case("raw png [N,1]", datatype="BYTES", shape=[3, 1], raw=bytes_elements(PNGS)),
    raw(2, name="one output", outputs=[("probabilities", None)]),
    typed(2, name="two outputs, reversed", outputs=[("logits", None), ("probabilities", None)]),
    raw(2, name="classification 3", outputs=[("probabilities", 3)]),
    typed(1, name="classification beyond 10", outputs=[("probabilities", 11)]),
    raw(1, name="id and version", request_id="req-7", version="1"),
    raw(1, name="timeout 1 s", timeout=1_000_000),
    raw(1, name="timeout 0 = none", timeout=0),
    # --- invalid input -----------------------------------------------------------------
    raw(1, name="3 channels", shape=[1, 3, 28, 28], expected=INVALID),
    raw(1, name="flat 784", shape=[1, 784], expected=INVALID),
    raw(0, name="no batch entry", shape=[0, 28, 28], expected=INVALID),
    raw(
        DEFAULT_MAX_IMAGES_PER_REQUEST + 1,
        name="batch too large",
        expected=INVALID,
    ),
    Case("raw 1 byte short", raw=pixels(1).tobytes()[:-1], expected=INVALID),
    Case("typed 1 value short", values=pixels(1).ravel().tolist()[:-1], expected=INVALID),
    Case("typed 256", values=[256] + [0] * 783, expected=INVALID),
    # A JSON true is no pixel; over gRPC booleans can only travel in bool_contents.
    Case("typed booleans", values=[True] * 784, expected=INVALID),
    Case("typed strings", datatype="FP32", values=["0.5"] * 784, expected=INVALID),
    Case("int32 datatype", datatype="INT32", raw=bytes(784 * 4), expected=INVALID),
    Case("unknown datatype", datatype="UINT9", raw=bytes(784), expected=INVALID),
    Case("fp32 above 1", datatype="FP32", values=[1.5] + [0.0] * 783, expected=INVALID),
    Case(
        "png garbage", datatype="BYTES", shape=[1], raw=bytes_elements([b"nope"]), expected=INVALID
    ),
    Case("png count", datatype="BYTES", shape=[2], raw=bytes_elements(PNGS[:1]), expected=INVALID),
    raw(1, name="wrong input name", input_name="input__0", expected=INVALID),
    raw(1, name="two inputs", inputs=2, expected=INVALID),
    raw(1, name="no input", inputs=0, expected=INVALID),
    raw(1, name="unknown output", outputs=[("scores", None)], expected=INVALID),
    raw(1, name="output twice", outputs=[("logits", None), ("logits", None)], expected=INVALID),
    raw(1, name="classification 0", outputs=[("probabilities", 0)], expected=INVALID),
    raw(1, name="classification -2", outputs=[("probabilities", -2)], expected=INVALID),
    raw(1, name="classification '3'", outputs=[("probabilities", "3")], expected=INVALID),
    raw(1, name="classification true", outputs=[("probabilities", True)], expected=INVALID),
    raw(1, name="timeout -1", timeout=-1, expected=INVALID),
    raw(1, name="timeout '1s'", timeout="1s", expected=INVALID),
    # --- what is served ----------------------------------------------------------------------
    raw(1, name="unknown model", model="absent", expected=NOT_FOUND),
    raw(1, name="unknown version", version="9", expected=NOT_FOUND),
    # The model is resolved before the rest is judged, whichever part a front reads first.
    raw(1, name="no input, unknown model", model="absent", inputs=0, expected=NOT_FOUND),
    Case("bad bytes, unknown version", version="9", raw=b"\0", expected=NOT_FOUND),
]


# --- the gRPC form -----------------------------------------------------------------------------


def parameter(message: pb.InferParameter, value: Any) -> None:
    if isinstance(value, bool):
        message.bool_param = value
    elif isinstance(value, int):
        message.int64_param = value
    else:
        message.string_param = str(value)


def grpc_request(case: Case) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=case.model, model_version=case.version, id=case.request_id
    )
    for _ in range(case.inputs):
        tensor = request.inputs.add(name=case.input_name, datatype=case.datatype, shape=case.shape)
        if case.raw is not None:
            request.raw_input_contents.append(case.raw)
        elif case.values and isinstance(case.values[0], bool):
            tensor.contents.bool_contents.extend(case.values)
        elif case.values and isinstance(case.values[0], str):
            tensor.contents.bytes_contents.extend(v.encode() for v in case.values)
        elif case.datatype == "FP32":
            tensor.contents.fp32_contents.extend(case.values or [])
        else:
            tensor.contents.uint_contents.extend(case.values or [])
    if case.inputs == 0:
        request.raw_input_contents.append(case.raw or b"")
    for name, count in case.outputs:
        output = request.outputs.add(name=name)
        if count is not None:
            parameter(output.parameters["classification"], count)
    if case.timeout is not None:
        parameter(request.parameters["timeout"], case.timeout)
    return request


def grpc_outputs(reply: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    found = {}
    for index, tensor in enumerate(reply.outputs):
        if tensor.datatype == "BYTES":
            if reply.raw_output_contents:
                found[tensor.name] = np.array(split(reply.raw_output_contents[index]))
            else:
                found[tensor.name] = np.array(list(tensor.contents.bytes_contents))
        elif reply.raw_output_contents:
            found[tensor.name] = np.frombuffer(reply.raw_output_contents[index], dtype="<f4")
        else:
            found[tensor.name] = np.array(tensor.contents.fp32_contents, dtype=np.float32)
        found[tensor.name] = found[tensor.name].reshape(tuple(tensor.shape))
    return found


def split(blob: bytes) -> list[bytes]:
    items, offset = [], 0
    while offset < len(blob):
        length = int.from_bytes(blob[offset : offset + 4], "little")
        items.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return items


# --- the HTTP form -----------------------------------------------------------------------------


def http_request(case: Case) -> tuple[str, bytes, dict[str, str]]:
    path = f"/v2/models/{case.model}" + (f"/versions/{case.version}" if case.version else "")
    tensor: dict[str, Any] = {
        "name": case.input_name,
        "datatype": case.datatype,
        "shape": case.shape,
    }
    binary = b""
    if case.raw is not None:
        tensor["parameters"] = {"binary_data_size": len(case.raw)}
        binary = case.raw * case.inputs
    else:
        tensor["data"] = case.values
    document: dict[str, Any] = {"inputs": [tensor] * case.inputs}
    if case.request_id:
        document["id"] = case.request_id
    if case.outputs:
        document["outputs"] = [
            {"name": name, **({} if count is None else {"parameters": {"classification": count}})}
            for name, count in case.outputs
        ]
    parameters: dict[str, Any] = {}
    if case.timeout is not None:
        parameters["timeout"] = case.timeout
    if case.raw is not None:
        parameters["binary_data_output"] = True  # raw in, raw out: as gRPC answers
    if parameters:
        document["parameters"] = parameters
    header = json.dumps(document).encode()
    headers = {"Content-Type": "application/json"}
    if binary:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(header)),
        }
    return path + "/infer", header + binary, headers


def http_outputs(answer: Answer) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    length = int(answer.headers.get("inference-header-content-length", len(answer.body)))
    document = json.loads(answer.body[:length])
    found, offset = {}, length
    for output in document["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is not None:
            blob = answer.body[offset : offset + size]
            offset += size
            if output["datatype"] == "BYTES":
                values = np.array(split(blob))
            else:
                values = np.frombuffer(blob, dtype="<f4")
        elif output["datatype"] == "BYTES":
            values = np.array([item.encode() for item in output["data"]])
        else:
            values = np.array(output["data"], dtype=np.float32)
        found[output["name"]] = values.reshape(tuple(output["shape"]))
    return document, found


# --- the test ----------------------------------------------------------------------------------


@pytest.fixture(params=["native", "grpcio"])
async def both(
    request: pytest.FixtureRequest,
    start_app: StartApp,
) -> AsyncIterator[tuple[ServingApp, pb_grpc.GRPCInferenceServiceAsyncStub]]:
    app = await start_app(grpc_front=request.param)
    async with aio.insecure_channel(app.target) as channel:
        yield app, pb_grpc.GRPCInferenceServiceStub(channel)


async def test_every_request_gets_the_same_answer_over_grpc_and_http(
    both: tuple[ServingApp, pb_grpc.GRPCInferenceServiceAsyncStub],
) -> None:
    app, stub = both
    mismatches = []
    for case in CORPUS:
        try:
            reply = await stub.ModelInfer(grpc_request(case), timeout=CALL_TIMEOUT_S)
            code, details = grpc.StatusCode.OK, ""
        except aio.AioRpcError as error:
            reply, code, details = None, error.code(), error.details() or ""
        path, body, headers = http_request(case)
        answer = await call(app.http_base, "POST", path, body, headers)
        if code != case.expected:
            mismatches.append(
                f"{case.name}: gRPC {code.name} ({details}), expected {case.expected.name}"
            )
        if answer.status != HTTP_STATUS[case.expected]:
            mismatches.append(f"{case.name}: HTTP {answer.status} {answer.body[:200]!r}")
        if code is not grpc.StatusCode.OK:
            assert "Traceback" not in details, details
            assert "Unexpected" not in details, details
            if answer.status != 200:
                assert set(answer.json()) == {"error"}, answer.body
            continue
        if reply is None or answer.status != 200:
            continue
        document, http_values = http_outputs(answer)
        grpc_values = grpc_outputs(reply)
        assert (reply.model_name, reply.model_version, reply.id) == (
            document["model_name"],
            document["model_version"],
            document.get("id", ""),
        ), case.name
        assert reply.id == case.request_id, case.name
        assert list(grpc_values) == list(http_values), case.name
        for name, values in grpc_values.items():
            np.testing.assert_array_equal(values, http_values[name], err_msg=f"{case.name}: {name}")
    assert not mismatches, "\n".join(mismatches)


def test_the_corpus_covers_every_kind_it_names() -> None:
    kinds = {case.expected for case in CORPUS}
    assert kinds == {grpc.StatusCode.OK, INVALID, NOT_FOUND}
    assert len({case.name for case in CORPUS}) == len(CORPUS), "case names must be unique"
