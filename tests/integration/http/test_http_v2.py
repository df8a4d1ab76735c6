"""KServe V2 over HTTP/REST: health, metadata, JSON and binary inference, errors, Triton's
extensions, static files and the metrics (a real in-process server, HTTP on port 0)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest

from mnist_serving_server.app import ServingApp
from mnist_serving_server.core.batcher import DEFAULT_MAX_BATCH_SIZE
from tests.integration.conftest import StartApp
from tests.integration.http.http_support import (
    Connection,
    binary_request,
    bytes_elements,
    call,
    png_of,
    split_binary,
)
from tests.support.metrics import sample_sum

pytestmark = pytest.mark.integration

INFER = "/v2/models/mnist/infer"
MIN_ACCURACY = 0.95
SAMPLE = 200


def json_infer_body(images: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": [len(images), 1, 28, 28],
                "data": images.ravel().tolist(),
            }
        ],
        **extra,
    }


def requests_counted(app: ServingApp, method: str, code: str = "OK") -> float:
    return sample_sum(
        app.registry,
        "mnist_serving_requests_total",
        {"protocol": "http", "method": method, "code": code},
    )


# --- health and metadata -------------------------------------------------------------------


async def test_health_answers_with_code_and_body(base: str) -> None:
    live = await call(base, "GET", "/v2/health/live")
    ready = await call(base, "GET", "/v2/health/ready")
    assert (live.status, live.json()) == (200, {"live": True})
    assert (ready.status, ready.json()) == (200, {"ready": True})


async def test_not_ready_before_warm_up_is_503_with_a_body(start_app: StartApp) -> None:
    gate = asyncio.Event()
    app = await start_app(warm_up_gate=gate, wait_ready=False)
    ready = await call(app.http_base, "GET", "/v2/health/ready")
    assert (ready.status, ready.json()) == (503, {"ready": False})
    model = await call(app.http_base, "GET", "/v2/models/mnist/ready")
    assert (model.status, model.json()) == (503, {"name": "mnist", "ready": False})
    infer = await call(
        app.http_base, "POST", INFER, json_infer_body(np.zeros((1, 28, 28), np.uint8))
    )
    assert infer.status == 503
    assert "error" in infer.json()
    gate.set()
    await app.wait_ready()
    assert (await call(app.http_base, "GET", "/v2/health/ready")).status == 200


async def test_server_metadata_advertises_the_binary_extension(base: str) -> None:
    answer = await call(base, "GET", "/v2")
    metadata = answer.json()
    assert answer.status == 200
    assert metadata["name"] == "mnist-serving"
    assert "binary_tensor_data" in metadata["extensions"]
    assert "model_repository" in metadata["extensions"]


async def test_model_metadata_and_readiness(base: str) -> None:
    answer = await call(base, "GET", "/v2/models/mnist")
    metadata = answer.json()
    assert answer.status == 200
    assert metadata["name"] == "mnist"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert {o["name"] for o in metadata["outputs"]} >= {"probabilities"}
    versioned = await call(base, "GET", "/v2/models/mnist/versions/1")
    assert versioned.json() == metadata
    ready = await call(base, "GET", "/v2/models/mnist/versions/1/ready")
    assert (ready.status, ready.json()) == (200, {"name": "mnist", "ready": True})


async def test_unknown_model_and_version_are_404_with_an_error(base: str) -> None:
    for path in ("/v2/models/nope", "/v2/models/mnist/versions/7"):
        answer = await call(base, "GET", path)
        assert answer.status == 404
        assert "nope" in answer.json()["error"] or "7" in answer.json()["error"]
    infer = await call(
        base, "POST", "/v2/models/nope/infer", json_infer_body(np.zeros((1, 28, 28), np.uint8))
    )
    assert infer.status == 404
    assert "error" in infer.json()
    ready = await call(base, "GET", "/v2/models/nope/ready")
    assert (ready.status, ready.json()) == (503, {"name": "nope", "ready": False})


async def test_unknown_path_and_wrong_method(base: str) -> None:
    missing = await call(base, "GET", "/v3/whatever")
    assert missing.status == 404
    assert "error" in missing.json()
    wrong = await call(base, "GET", INFER)
    assert wrong.status == 405
    assert wrong.headers["allow"] == "POST"
    assert "error" in wrong.json()


# --- inference: JSON -----------------------------------------------------------------------


async def test_hand_written_json_infer_as_curl_sends_it(base: str, sample_digits: Any) -> None:
    images, labels = sample_digits
    body = json.dumps(json_infer_body(images[:1], id="curl-1")).encode()
    answer = await call(base, "POST", INFER, body, {"Content-Type": "application/json"})
    reply = answer.json()
    assert answer.status == 200
    assert reply["model_name"] == "mnist"
    assert reply["model_version"] == "1"
    assert reply["id"] == "curl-1"
    outputs = {o["name"]: o for o in reply["outputs"]}
    probabilities = outputs["probabilities"]
    assert probabilities["datatype"] == "FP32"
    assert probabilities["shape"] == [1, 10]
    assert len(probabilities["data"]) == 10
    assert int(np.argmax(probabilities["data"])) == int(labels[0])


async def test_json_infer_classifies_the_sample_digits(base: str, sample_digits: Any) -> None:
    images, labels = sample_digits
    images, labels = images[:SAMPLE], labels[:SAMPLE]
    body = json_infer_body(images, outputs=[{"name": "probabilities"}])
    answer = await call(base, "POST", INFER, body)
    (output,) = answer.json()["outputs"]
    predicted = np.asarray(output["data"], dtype=np.float32).reshape(SAMPLE, 10).argmax(axis=1)
    assert float(np.mean(predicted == labels)) >= MIN_ACCURACY


async def test_nested_data_fp32_and_omitted_unit_dimension(base: str, sample_digits: Any) -> None:
    images, labels = sample_digits
    nested = (images[:2].astype(np.float32) / 255).tolist()  # [2,28,28] nested lists
    body = {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 28, 28], "data": nested}]
    }
    answer = await call(base, "POST", INFER, body)
    assert answer.status == 200, answer.body
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    predicted = np.asarray(outputs["probabilities"]["data"]).reshape(2, 10).argmax(axis=1)
    assert predicted.tolist() == labels[:2].tolist()


async def test_classification_output_and_timeout_parameter(base: str, sample_digits: Any) -> None:
    images, labels = sample_digits
    body = json_infer_body(
        images[:1],
        parameters={"timeout": 5_000_000},
        outputs=[{"name": "probabilities", "parameters": {"classification": 3}}],
    )
    answer = await call(base, "POST", INFER, body)
    (output,) = answer.json()["outputs"]
    assert output["datatype"] == "BYTES"
    assert output["shape"] == [1, 3]
    score, index, label = output["data"][0].split(":")
    assert int(index) == int(labels[0])
    assert label == str(labels[0])
    assert float(score) > 0.5


async def test_wrong_shape_is_400_with_the_expected_contract(base: str) -> None:
    body = {
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 27, 27], "data": [0] * 729}]
    }
    answer = await call(base, "POST", INFER, body)
    assert answer.status == 400
    assert "UINT8 [N,1,28,28]" in answer.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1,1,28,28], '
        b'"data": [1, [2]]}]}',
        b'{"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1,1,28,28], "data": "x"}]}',
        b'{"inputs": []}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
async def test_malformed_json_is_400(base: str, body: bytes) -> None:
    answer = await call(base, "POST", INFER, body, {"Content-Type": "application/json"})
    assert answer.status == 400
    assert answer.json()["error"]
    assert "Traceback" not in answer.body.decode()


async def test_out_of_range_values_are_400(base: str) -> None:
    data = [0] * 783 + [256]
    body = {
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": data}]
    }
    answer = await call(base, "POST", INFER, body)
    assert answer.status == 400
    assert "[0, 255]" in answer.json()["error"]


# --- inference: Triton's binary tensor data extension --------------------------------------


async def test_binary_round_trip_with_binary_data_output(base: str, sample_digits: Any) -> None:
    images, labels = sample_digits
    body, headers = binary_request(images[:SAMPLE])
    answer = await call(base, "POST", INFER, body, headers)
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/octet-stream"
    document, blobs = split_binary(answer)
    names = [o["name"] for o in document["outputs"]]
    assert set(blobs) == set(names)
    probabilities = np.frombuffer(blobs["probabilities"], dtype="<f4").reshape(SAMPLE, 10)
    assert float(np.mean(probabilities.argmax(axis=1) == labels[:SAMPLE])) >= MIN_ACCURACY


async def test_binary_outputs_in_request_order_mixed_with_json(
    base: str, sample_digits: Any
) -> None:
    images, _ = sample_digits
    outputs = [
        {"name": "logits", "parameters": {"binary_data": True}},
        {"name": "probabilities", "parameters": {"binary_data": False}},
    ]
    body, headers = binary_request(images[:2], outputs=outputs)
    answer = await call(base, "POST", INFER, body, headers)
    document, blobs = split_binary(answer)
    assert [o["name"] for o in document["outputs"]] == ["logits", "probabilities"]
    assert list(blobs) == ["logits"]
    assert document["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    assert len(document["outputs"][1]["data"]) == 20
    logits = np.frombuffer(blobs["logits"], dtype="<f4").reshape(2, 10)
    probabilities = np.asarray(document["outputs"][1]["data"]).reshape(2, 10)
    assert (logits.argmax(axis=1) == probabilities.argmax(axis=1)).all()


async def test_binary_input_with_json_output(base: str, sample_digits: Any) -> None:
    images, labels = sample_digits
    body, headers = binary_request(images[:1], binary_output=False)
    answer = await call(base, "POST", INFER, body, headers)
    assert answer.headers["content-type"] == "application/json"
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert int(np.argmax(outputs["probabilities"]["data"])) == int(labels[0])


async def test_binary_size_mismatch_is_400(base: str) -> None:
    body, headers = binary_request(np.zeros((1, 28, 28), np.uint8))
    answer = await call(base, "POST", INFER, body + b"extra", headers)
    assert answer.status == 400
    assert "binary" in answer.json()["error"]
    short = await call(base, "POST", INFER, body[:-5], headers)
    assert short.status == 400


# --- encoded images through V2 BYTES --------------------------------------------------------


async def test_png_through_binary_bytes_input(base: str, sample_digits: Any) -> None:
    images, labels = sample_digits
    pngs = [png_of(image) for image in images[:8]]
    data = bytes_elements(pngs)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "BYTES",
                    "shape": [len(pngs)],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "probabilities"}],
        }
    ).encode()
    answer = await call(
        base,
        "POST",
        INFER,
        header + data,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert answer.status == 200, answer.body
    (output,) = answer.json()["outputs"]
    predicted = np.asarray(output["data"]).reshape(8, 10).argmax(axis=1)
    assert float(np.mean(predicted == labels[:8])) >= 0.85


async def test_undecodable_bytes_input_is_400(base: str) -> None:
    data = bytes_elements([b"not an image"])
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    answer = await call(
        base, "POST", INFER, header + data, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert answer.status == 400
    assert "pixels[0]" in answer.json()["error"]


# --- Triton's extensions --------------------------------------------------------------------


async def test_repository_index_load_unload(base: str) -> None:
    index = await call(base, "POST", "/v2/repository/index", {})
    assert index.status == 200
    assert {"name": "mnist", "version": "1", "state": "READY", "reason": ""} in index.json()
    ready_only = await call(base, "POST", "/v2/repository/index", {"ready": True})
    assert ready_only.json() == [e for e in index.json() if e["state"] == "READY"]
    unload = await call(base, "POST", "/v2/repository/models/mnist/unload")
    assert unload.status == 200
    gone = await call(base, "GET", "/v2/models/mnist")
    assert gone.status == 404
    load = await call(base, "POST", "/v2/repository/models/mnist/load", {})
    assert load.status == 200
    assert (await call(base, "GET", "/v2/models/mnist")).status == 200
    unknown = await call(base, "POST", "/v2/repository/models/nope/load")
    assert unknown.status in (400, 404)
    assert "error" in unknown.json()


async def test_model_config_and_statistics(base: str, sample_digits: Any) -> None:
    images, _ = sample_digits
    body, headers = binary_request(images[:3])
    assert (await call(base, "POST", INFER, body, headers)).status == 200
    config = (await call(base, "GET", "/v2/models/mnist/config")).json()
    assert config["name"] == "mnist"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_UINT8", "dims": [1, 28, 28]}]
    assert config["max_batch_size"] == DEFAULT_MAX_BATCH_SIZE  # the server's default
    stats = (await call(base, "GET", "/v2/models/mnist/stats")).json()
    (entry,) = stats["model_stats"]
    assert entry["name"] == "mnist"
    # A fresh server (warm-up is not counted): the one call above, of three images.
    assert entry["inference_count"] == 3
    assert entry["execution_count"] == 1
    assert entry["inference_stats"]["success"]["count"] == 1
    everything = (await call(base, "GET", "/v2/models/stats")).json()
    assert [e["name"] for e in everything["model_stats"]] == ["mnist"]


# --- static files -------------------------------------------------------------------------------


async def test_the_page_and_static_files(base: str) -> None:
    page = await call(base, "GET", "/")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert b"<html" in page.body.lower()
    same = await call(base, "GET", "/static/index.html")
    assert same.body == page.body
    for path in ("/static/../asgi.py", "/static/.hidden", "/static/nope.js", "/static/%2e%2e"):
        answer = await call(base, "GET", path)
        assert answer.status == 404, path


# --- metrics --------------------------------------------------------------------------------------


async def test_every_request_is_counted_once_with_protocol_http(
    http_server: ServingApp, base: str
) -> None:
    before = requests_counted(http_server, "ModelInfer")
    before_ready = requests_counted(http_server, "ServerReady")
    before_bad = requests_counted(http_server, "ModelInfer", "INVALID_ARGUMENT")
    body, headers = binary_request(np.zeros((1, 28, 28), np.uint8))
    connection = Connection(base)
    try:
        for _ in range(3):
            assert (await connection.request("POST", INFER, body, headers)).status == 200
        await connection.request("GET", "/v2/health/ready")
        await connection.request("POST", INFER, b"{}", {})
    finally:
        connection.close()
    assert requests_counted(http_server, "ModelInfer") == before + 3
    assert requests_counted(http_server, "ServerReady") == before_ready + 1
    assert requests_counted(http_server, "ModelInfer", "INVALID_ARGUMENT") == before_bad + 1
    assert (
        sample_sum(
            http_server.registry,
            "mnist_serving_requests_total",
            {
                "protocol": "http",
                "method": "ModelInfer",
                "model": "mnist",
                "version": "1",
                "code": "OK",
            },
        )
        == before + 3
    )
