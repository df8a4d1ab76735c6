"""Health, metrics, reflection, port clashes and graceful shutdown of a real server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mnist_serving_proto import classifier_pb2_grpc
from mnist_serving_server.app import ServerStartError, ServingApp
from mnist_serving_server.grpc_api.health import SERVICE_NAMES
from tests.integration.conftest import StartApp
from tests.integration.server.classify_support import raw_request
from tests.support.metrics import SampleKey, scrape, total
from tests.support.server_process import ServerProcessError, start_server_process
from tests.support.waiting import wait_until

ONE_DIGIT = np.zeros((1, 28, 28), dtype=np.uint8)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OK_CALLS = 7
# SIGTERM burst: workers keep calling until refused; a bound keeps the test finite.
BURST_WORKERS = 8
BURST_MAX_CALLS_PER_WORKER = 400
BURST_CALLS_BEFORE_SIGTERM = 40
BURST_IMAGES_PER_CALL = 16
SIGTERM_DRAIN_DELAY_S = "3"
HEALTH_POLL_S = 0.05
PROCESS_EXIT_TIMEOUT_S = 60
EXIT_START_FAILED = 1


async def health_status(channel: aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


def requests_total(samples: Mapping[SampleKey, float], method: str, code: str) -> float:
    return total(samples, "mnist_serving_requests_total", method=method, code=code)


async def test_health_is_not_serving_until_warm_then_serving(start_app: StartApp) -> None:
    gate = asyncio.Event()
    app = await start_app(warm_up_gate=gate, wait_ready=False)
    async with aio.insecure_channel(app.target) as channel:
        for service in SERVICE_NAMES:
            assert await health_status(channel, service) == NOT_SERVING
        gate.set()
        await app.wait_ready()
        for service in SERVICE_NAMES:
            assert await health_status(channel, service) == SERVING


async def test_stop_flips_health_to_not_serving_during_the_drain(start_app: StartApp) -> None:
    app = await start_app(drain_delay_s=1.0)
    async with aio.insecure_channel(app.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        stopping = asyncio.ensure_future(app.stop())
        await wait_until(lambda: not app.health.serving, "NOT_SERVING")
        assert await health_status(channel, "") == NOT_SERVING
        # Still answering during the drain delay, so in-flight traffic is not cut off.
        assert len((await stub.Classify(raw_request(ONE_DIGIT))).predictions) == 1
        await stopping
        with pytest.raises(aio.AioRpcError) as refused:
            await stub.Classify(raw_request(ONE_DIGIT), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_metrics_parse_and_request_counters_move_by_the_calls_made(
    server: ServingApp, classifier_stub: classifier_pb2_grpc.ClassifierAsyncStub, model_dir: Path
) -> None:
    assert server.metrics_port is not None
    before = await asyncio.to_thread(scrape, server.metrics_port)
    for _ in range(OK_CALLS):
        await classifier_stub.Classify(raw_request(ONE_DIGIT))
    with pytest.raises(aio.AioRpcError):
        await classifier_stub.Classify(raw_request(np.zeros((1, 27, 28))))
    after = await asyncio.to_thread(scrape, server.metrics_port)

    ok_delta = requests_total(after, "Classify", "OK") - requests_total(before, "Classify", "OK")
    assert ok_delta == OK_CALLS
    assert requests_total(after, "Classify", "INVALID_ARGUMENT") == 1
    names = {name for name, _ in after}
    for expected in (
        "mnist_serving_request_duration_seconds_bucket",
        "mnist_serving_queue_wait_seconds_bucket",
        "mnist_serving_batch_compute_seconds_bucket",
        "mnist_serving_batch_size_bucket",
        "mnist_serving_queue_depth",
        "mnist_serving_queue_capacity",
        "mnist_serving_inflight_requests",
        "mnist_serving_rejections_total",
        "mnist_serving_model_info",
    ):
        assert expected in names, expected
    served = {"model": "mnist", "version": model_dir.name}
    assert total(after, "mnist_serving_batch_size_sum", **served) >= OK_CALLS
    duration_count = total(
        after, "mnist_serving_request_duration_seconds_count", method="Classify", **served
    )
    assert duration_count == OK_CALLS + 1
    sha256 = hashlib.sha256((model_dir / "model.onnx").read_bytes()).hexdigest()
    (info_labels,) = [labels for name, labels in after if name == "mnist_serving_model_info"]
    assert dict(info_labels)["sha256"] == sha256
    assert dict(info_labels)["model"] == "mnist"
    assert dict(info_labels)["version"] == model_dir.name
    assert after[("mnist_serving_inflight_requests", ())] == 0
    capacity = total(after, "mnist_serving_queue_capacity", **served)
    assert capacity == server.config.max_queue_size


async def test_reflection_lists_the_services(server: ServingApp, channel: aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = [response async for response in stub.ServerReflectionInfo(iter([request]))]
    names = {service.name for service in responses[0].list_services_response.service}
    assert {"mnist_serving.v1.Classifier", "grpc.health.v1.Health"} <= names


async def test_port_clash_fails_loudly(server: ServingApp, start_app: StartApp) -> None:
    with pytest.raises(
        ServerStartError, match=f"cannot bind the gRPC port 127.0.0.1:{server.grpc_port}"
    ):
        await start_app(port=server.grpc_port)


async def test_ready_file_holds_the_bound_ports(start_app: StartApp, tmp_path: Path) -> None:
    ready_file = tmp_path / "ready.json"
    app = await start_app(ready_file=ready_file)
    content = json.loads(ready_file.read_text())
    assert content["grpc_port"] == app.grpc_port
    assert content["metrics_port"] == app.metrics_port
    assert isinstance(content["pid"], int)


def test_port_clash_between_processes_exits_non_zero(model_repository: Path) -> None:
    with start_server_process(model_repository) as first:
        with pytest.raises(ServerProcessError) as failed:
            start_server_process(model_repository, "--port", str(first.grpc_port))
        assert first.process.poll() is None  # the first server is unharmed
    message = str(failed.value)
    assert f"exited with {EXIT_START_FAILED}" in message
    assert f"cannot bind the gRPC port 127.0.0.1:{first.grpc_port}" in message
    assert "Traceback" not in message


async def test_sigterm_during_a_burst_completes_accepted_calls_and_exits_zero(
    model_repository: Path, sample_digits: tuple[Any, Any]
) -> None:
    """Workers call without pause; SIGTERM lands mid-burst. Like a load balancer, the workers
    stop sending once health says NOT_SERVING. Every call sent completes OK, calls sent
    during the drain delay are still served, and the process exits 0.

    (A client that ignores health and keeps sending until the listener closes gets its
    late calls refused: UNAVAILABLE, or CANCELLED from gRPC core for calls that were queued
    in the transport but never reached the servicer. That is why the drain delay exists.)
    """
    images, _ = sample_digits
    request = raw_request(images[:BURST_IMAGES_PER_CALL])
    with start_server_process(
        model_repository, "--drain-delay-s", SIGTERM_DRAIN_DELAY_S
    ) as process:
        async with aio.insecure_channel(process.target) as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            codes: list[grpc.StatusCode] = []
            not_serving = asyncio.Event()

            async def worker() -> None:
                for _ in range(BURST_MAX_CALLS_PER_WORKER):
                    if not_serving.is_set():
                        return
                    try:
                        response = await stub.Classify(request)
                    except aio.AioRpcError as error:
                        codes.append(error.code())
                        return
                    assert len(response.predictions) == BURST_IMAGES_PER_CALL
                    codes.append(grpc.StatusCode.OK)

            workers = [asyncio.ensure_future(worker()) for _ in range(BURST_WORKERS)]
            await wait_until(lambda: len(codes) >= BURST_CALLS_BEFORE_SIGTERM, "a burst")
            process.process.send_signal(signal.SIGTERM)
            signalled_at = time.monotonic()
            while await health_status(channel, "") != NOT_SERVING:
                assert time.monotonic() - signalled_at < float(SIGTERM_DRAIN_DELAY_S)
                await asyncio.sleep(HEALTH_POLL_S)
            not_serving.set()
            await asyncio.gather(*workers)
            # Within the drain delay the server still answers.
            during_drain = await stub.Classify(request)
            assert time.monotonic() - signalled_at < float(SIGTERM_DRAIN_DELAY_S)
        exit_code = await asyncio.to_thread(process.stop, signal.SIGTERM, PROCESS_EXIT_TIMEOUT_S)

    assert exit_code == 0, process.output()
    assert len(during_drain.predictions) == BURST_IMAGES_PER_CALL
    assert set(codes) == {grpc.StatusCode.OK}
    assert len(codes) >= BURST_CALLS_BEFORE_SIGTERM
    assert "stopped" in process.output()
