"""HTTP operations: bearer tokens, TLS, body limits, load shedding, drain on stop, and the
encoded-image path through gRPC V2 (the same core function as HTTP and Classify)."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from tests.integration.conftest import RuntimeGate, StartApp, queue_depth
from tests.integration.http.http_support import (
    Connection,
    binary_request,
    bytes_elements,
    call,
    png_of,
)
from tests.integration.security.security_support import (
    certificate_set,
    new_token,
    write_token_file,
)
from tests.support.metrics import sample_sum
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

INFER = "/v2/models/mnist/infer"


async def test_token_required_except_health(start_app: StartApp, tmp_path: Path) -> None:
    token = new_token()
    app = await start_app(auth_token_file=write_token_file(tmp_path / "tokens", token))
    body, headers = binary_request(np.zeros((1, 28, 28), np.uint8))
    refused = await call(app.http_base, "POST", INFER, body, headers)
    assert refused.status == 401
    assert refused.json() == {"error": "authentication required"}
    assert refused.headers["www-authenticate"] == "Bearer"
    wrong = await call(
        app.http_base, "POST", INFER, body, {**headers, "Authorization": f"Bearer {new_token()}"}
    )
    assert wrong.status == 401
    ok = await call(
        app.http_base, "POST", INFER, body, {**headers, "Authorization": f"bearer {token}"}
    )
    assert ok.status == 200
    assert (await call(app.http_base, "GET", "/v2")).status == 401
    assert (await call(app.http_base, "GET", "/v2/health/ready")).status == 200
    assert (await call(app.http_base, "GET", "/v2/health/live")).status == 200
    assert (
        sample_sum(
            app.registry,
            "mnist_serving_requests_total",
            {"protocol": "http", "method": "ModelInfer", "code": "UNAUTHENTICATED"},
        )
        == 2
    )
    assert (
        sample_sum(app.registry, "mnist_serving_rejections_total", {"reason": "unauthenticated"})
        >= 3
    )


async def test_health_needs_the_token_when_not_exempt(start_app: StartApp, tmp_path: Path) -> None:
    token = new_token()
    app = await start_app(
        auth_token_file=write_token_file(tmp_path / "tokens", token), auth_exempt_services=()
    )
    assert (await call(app.http_base, "GET", "/v2/health/ready")).status == 401
    authorized = {"Authorization": f"Bearer {token}"}
    assert (await call(app.http_base, "GET", "/v2/health/ready", None, authorized)).status == 200
    assert (await call(app.http_base, "GET", "/")).status == 200  # the page is public


async def test_tls_with_the_same_certificate_flags(start_app: StartApp, tmp_path: Path) -> None:
    certificates = certificate_set(tmp_path / "certs")
    app = await start_app(tls_cert=certificates.server_cert, tls_key=certificates.server_key)
    assert app.http_base.startswith("https://")
    context = ssl.create_default_context(cafile=str(certificates.ca_cert))

    def get() -> tuple[int, bytes]:
        connection = http.client.HTTPSConnection(
            "127.0.0.1", app.http_port, context=context, timeout=30
        )
        try:
            connection.request("GET", "/v2/health/ready")
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    status, body = await asyncio.to_thread(get)
    assert (status, json.loads(body)) == (200, {"ready": True})


async def test_body_over_the_limit_is_413_before_it_is_read(start_app: StartApp) -> None:
    app = await start_app(max_message_bytes=4096)
    body, headers = binary_request(np.zeros((8, 28, 28), np.uint8))  # > 6 KB
    answer = await call(app.http_base, "POST", INFER, body, headers)
    assert answer.status == 413
    assert "4096" in answer.json()["error"]

    def chunked() -> int:
        connection = http.client.HTTPConnection("127.0.0.1", app.http_port, timeout=30)
        try:
            connection.request(
                "POST",
                INFER,
                body=iter([body[:3000], body[3000:]]),
                headers=headers,
                encode_chunked=True,
            )
            return connection.getresponse().status
        finally:
            connection.close()

    assert await asyncio.to_thread(chunked) == 413
    small, small_headers = binary_request(np.zeros((1, 28, 28), np.uint8))
    assert (await call(app.http_base, "POST", INFER, small, small_headers)).status == 200


async def test_queue_full_is_429_with_retry_after(
    start_app: StartApp, runtime_gate: RuntimeGate
) -> None:
    app = await start_app(max_queue_size=2, max_images_per_request=2)
    body, headers = binary_request(np.zeros((2, 28, 28), np.uint8))
    runtime_gate.close()
    first = asyncio.ensure_future(call(app.http_base, "POST", INFER, body, headers))
    await runtime_gate.wait_entered()
    second = asyncio.ensure_future(call(app.http_base, "POST", INFER, body, headers))
    await wait_until(lambda: queue_depth(app) == 2)
    refused = await call(app.http_base, "POST", INFER, body, headers)
    runtime_gate.open()
    assert refused.status == 429
    assert refused.headers["retry-after"] == "1"
    assert "error" in refused.json()
    assert (await first).status == 200
    assert (await second).status == 200


async def test_stop_drains_in_flight_and_refuses_new_with_connection_close(
    start_app: StartApp, runtime_gate: RuntimeGate
) -> None:
    app = await start_app(drain_delay_s=0.0)
    body, headers = binary_request(np.zeros((1, 28, 28), np.uint8))
    idle = Connection(app.http_base)
    try:
        assert (await idle.request("GET", "/v2/health/live")).status == 200
        runtime_gate.close()
        in_flight = asyncio.ensure_future(call(app.http_base, "POST", INFER, body, headers))
        await runtime_gate.wait_entered()
        http_app = app.http_app
        assert http_app is not None
        stopping = asyncio.ensure_future(app.stop(drain_delay_s=0))
        await wait_until(lambda: http_app.refusing)
        refused = await idle.request("POST", INFER, body, headers)
        assert refused.status == 503, refused.body
        assert refused.headers["connection"] == "close"
        assert "error" in refused.json()
        runtime_gate.open()
        answer = await in_flight
        assert answer.status == 200, answer.body
        await stopping
    finally:
        # Whatever failed above, nothing may stay blocked (the gate, the connection).
        runtime_gate.open()
        idle.close()


async def test_readiness_is_503_during_the_drain_delay(start_app: StartApp) -> None:
    app = await start_app()
    base = app.http_base
    stopping = asyncio.ensure_future(app.stop(drain_delay_s=1.0))
    await wait_until(lambda: not app.ready)
    ready = await call(base, "GET", "/v2/health/ready")
    assert (ready.status, ready.json()) == (503, {"ready": False})
    body, headers = binary_request(np.zeros((1, 28, 28), np.uint8))
    assert (await call(base, "POST", INFER, body, headers)).status == 200  # still serving
    await stopping


async def test_http_off(start_app: StartApp) -> None:
    app = await start_app(http_port=-1)
    assert app.http_port is None


# --- encoded images through gRPC V2 (the same core path as HTTP and Classify) -----------------


def png_request(pngs: list[bytes], *, raw: bool) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist")
    tensor = request.inputs.add(name="pixels", datatype="BYTES", shape=[len(pngs)])
    if raw:
        request.raw_input_contents.append(bytes_elements(pngs))
    else:
        tensor.contents.bytes_contents.extend(pngs)
    request.outputs.add(name="probabilities")
    return request


@pytest.mark.parametrize("raw", [True, False])
async def test_png_through_grpc_v2_bytes(
    start_app: StartApp, sample_digits: Any, raw: bool
) -> None:
    app = await start_app(http_port=-1)
    images, labels = sample_digits
    pngs = [png_of(image) for image in images[:8]]
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        response = await stub.ModelInfer(png_request(pngs, raw=raw), timeout=30)
    (output,) = response.outputs
    if raw:
        scores = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    else:
        scores = np.asarray(output.contents.fp32_contents, dtype=np.float32)
    predicted = scores.reshape(8, 10).argmax(axis=1)
    assert float(np.mean(predicted == labels[:8])) >= 0.85


async def test_undecodable_png_through_grpc_v2_is_invalid_argument(start_app: StartApp) -> None:
    app = await start_app(http_port=-1)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as caught:
            await stub.ModelInfer(png_request([b"nope"], raw=False), timeout=30)
    assert caught.value.code().name == "INVALID_ARGUMENT"
    assert "pixels[0]" in (caught.value.details() or "")
