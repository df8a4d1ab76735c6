"""`mnist-serving --workers 2` as a user runs it: one port, two processes, one /metrics.

Checks that connections really land on both worker processes (their sockets in /proc),
that every reply is right, that /metrics adds the workers up exactly, that health is one
answer, and that SIGTERM ends every process (a dead worker is replaced:
test_worker_supervision.py).
"""

from __future__ import annotations

import http.client
import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from tests.support.channels import open_channels
from tests.support.metrics import scrape
from tests.support.processes import (
    established_server_sockets,
    socket_inodes_of,
    wait_gone,
    worker_pids,
)
from tests.support.server_process import ServerProcess, start_server_process

WORKERS = 2
RPC_TIMEOUT_S = 30
# Separate connections: the kernel spreads new connections over the workers by a hash,
# so with this many the chance that all land on one of two workers is 2**-15.
CONNECTIONS = 16
REQUESTS_PER_CONNECTION = 3
IMAGES_PER_REQUEST = 4
# Not the default 4096: the capacity gauge must report the configured size, per worker.
WORKER_QUEUE_SIZE = 1000
STOP_TIMEOUT_S = 60
START_TIMEOUT_S = 120
HEALTH_NAMES = ("", "mnist_serving.v1.Classifier", "inference.GRPCInferenceService")


@pytest.fixture
def workers_server(model_repository: Path) -> Iterator[ServerProcess]:
    with start_server_process(
        model_repository,
        "--workers",
        str(WORKERS),
        "--drain-delay-s",
        "0",
        "--max-queue-size",
        str(WORKER_QUEUE_SIZE),
        "--max-images-per-request",
        str(WORKER_QUEUE_SIZE),
        timeout_s=START_TIMEOUT_S,
    ) as server:
        yield server


def test_two_workers_share_the_port_and_answer_correctly(
    workers_server: ServerProcess, model_dir: Path, sample_digits: tuple[Any, Any]
) -> None:
    workers = worker_pids(workers_server)
    assert len(workers) == WORKERS, workers
    images, _ = sample_digits
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    channels = open_channels(workers_server.target, CONNECTIONS)
    try:
        connections = established_server_sockets(workers_server.grpc_port)
        per_worker = [len(socket_inodes_of(pid) & connections) for pid in workers]
        assert sum(per_worker) == CONNECTIONS, per_worker
        assert all(count > 0 for count in per_worker), per_worker

        sent = 0
        for index, channel in enumerate(channels):
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            for round_ in range(REQUESTS_PER_CONNECTION):
                start = (index * REQUESTS_PER_CONNECTION + round_) * IMAGES_PER_REQUEST
                digits = images[start : start + IMAGES_PER_REQUEST]
                (expected,) = session.run(["probabilities"], {"pixels": digits[:, None]})
                reply = stub.Classify(
                    classifier_pb2.ClassifyRequest(
                        images=[classifier_pb2.Image(pixels=d.tobytes()) for d in digits]
                    ),
                    timeout=RPC_TIMEOUT_S,
                )
                served = np.array([list(p.probabilities) for p in reply.predictions])
                assert [p.label for p in reply.predictions] == expected.argmax(axis=1).tolist()
                np.testing.assert_allclose(served, expected, atol=1e-6)
                sent += 1

        for channel in channels:
            health = health_pb2_grpc.HealthStub(channel)
            for name in HEALTH_NAMES:
                answer = health.Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=RPC_TIMEOUT_S
                )
                assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
    finally:
        for channel in channels:
            channel.close()

    samples = scrape(workers_server.metrics_port)
    ok = sum(
        value
        for (name, labels), value in samples.items()
        if name == "mnist_serving_requests_total"
        and {("code", "OK"), ("method", "Classify")} <= set(labels)
    )
    assert ok == sent
    images = sum(v for (name, _), v in samples.items() if name == "mnist_serving_batch_size_sum")
    assert images == sent * IMAGES_PER_REQUEST
    assert samples[("mnist_serving_inflight_requests", ())] == 0
    # Each worker has a queue of its own: the pod holds their sum (as queue_depth sums).
    capacity = sum(v for (name, _), v in samples.items() if name == "mnist_serving_queue_capacity")
    assert capacity == WORKERS * WORKER_QUEUE_SIZE
    model_info = [key for key in samples if key[0] == "mnist_serving_model_info"]
    assert len(model_info) == 1, model_info
    assert samples[model_info[0]] == 1


def test_sigterm_stops_every_worker_and_exits_zero(workers_server: ServerProcess) -> None:
    workers = worker_pids(workers_server)
    assert len(workers) == WORKERS
    assert workers_server.stop(signal.SIGTERM, timeout=STOP_TIMEOUT_S) == 0
    assert wait_gone(workers) == []
    assert "stop signal received" in workers_server.output()


def test_workers_end_when_the_parent_is_killed(workers_server: ServerProcess) -> None:
    workers = worker_pids(workers_server)
    assert len(workers) == WORKERS
    workers_server.process.kill()  # SIGKILL: the parent cannot forward anything
    workers_server.process.wait(timeout=STOP_TIMEOUT_S)
    assert wait_gone(workers) == []


def test_workers_serve_http_on_one_shared_port(workers_server: ServerProcess) -> None:
    """`--workers N` serves HTTP too: one port, connections spread over the workers."""
    assert workers_server.http_port is not None
    body = json.dumps(
        {
            "inputs": [
                {"name": "pixels", "datatype": "UINT8", "shape": [1, 1, 28, 28], "data": [0] * 784}
            ]
        }
    ).encode()
    served_by: set[int] = set()
    workers = worker_pids(workers_server)
    port = workers_server.http_port
    deadline = time.monotonic() + START_TIMEOUT_S
    while len(served_by) < len(workers) and time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=RPC_TIMEOUT_S)
        try:
            connection.request("GET", "/v2/health/ready")
            ready = connection.getresponse()
            assert (ready.status, json.loads(ready.read())) == (200, {"ready": True})
            established = established_server_sockets(port)
            served_by.update(pid for pid in workers if socket_inodes_of(pid) & established)
        finally:
            connection.close()
    assert served_by == set(workers)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/mnist/infer", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
        assert response.status == 200
        assert json.loads(response.read())["model_name"] == "mnist"
