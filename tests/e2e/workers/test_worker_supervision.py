"""`--workers 2`: a worker that dies is replaced while the other keeps serving; the
replacement serves its siblings' repository state; a crash loop still ends the server.

Real processes and real SIGKILLs: the load runs on connections of their own, the kernel
spreads them over the workers, and the test proves which worker holds which.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import urllib.request
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.workers import RESTART_LIMIT
from tests.integration.v2.v2_helpers import output_array, raw_infer_request
from tests.support.channels import open_channels
from tests.support.load import ModelInferLoad
from tests.support.metrics import scrape, total
from tests.support.processes import established_server_sockets, socket_inodes_of, worker_pids
from tests.support.server_process import ServerProcess, start_server_process
from tests.support.waiting import wait_for

WORKERS = 2
MODEL = "mnist"
SECOND_MODEL = "mnist_b"
START_TIMEOUT_S = 120
RPC_TIMEOUT_S = 10
# The bar: at least this many calls succeed in the seconds after the kill.
CALLS_AFTER_KILL = 100
AFTER_KILL_S = 4.0
REPLACED_WITHIN_S = 30.0
CONNECTIONS = 16  # all on one of two workers: chance 2**-15
CRASH_LOOP_EXIT_S = 120.0


@pytest.fixture
def repository(model_repository: Path, tmp_path: Path) -> Path:
    """mnist/1, and the same model under a second name (the state test unloads it)."""
    repository = tmp_path / "repository"
    shutil.copytree(model_repository / MODEL, repository / MODEL)
    shutil.copytree(model_repository / MODEL, repository / SECOND_MODEL)
    return repository


def start_workers(repository: Path, *args: str) -> ServerProcess:
    """The supervisor as the product runs it (the tests' environment turns it off)."""
    return start_server_process(
        repository, "--workers", str(WORKERS), "--supervise", "on", "--drain-delay-s", "0",
        *args, timeout_s=START_TIMEOUT_S,
    )  # fmt: skip


def replaced(server: ServerProcess, dead: int, workers: int = WORKERS) -> list[int] | None:
    """The worker pids once `dead` is replaced and every worker serves, else None."""
    pids = worker_pids(server)
    if dead in pids or len(pids) != workers:
        return None
    samples = scrape(server.metrics_port)
    restarted = total(samples, "mnist_serving_worker_restarts_total") >= 1
    serving = total(samples, "mnist_serving_workers", state="serving") == workers
    return pids if restarted and serving else None


def replaced_or_exited(server: ServerProcess, dead: int) -> bool | None:
    return True if server.process.poll() is not None or replaced(server, dead) else None


def pids_reached(server: ServerProcess) -> tuple[list[grpc.Channel], set[int]]:
    """CONNECTIONS new channels, and the worker pids that hold at least one of them."""
    channels = open_channels(server.target, CONNECTIONS)
    established = established_server_sockets(server.grpc_port)
    reached = {pid for pid in worker_pids(server) if socket_inodes_of(pid) & established}
    return channels, reached


def test_a_killed_worker_is_replaced_while_the_other_serves(
    repository: Path, sample_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = sample_digits
    with start_workers(repository) as server:
        victim = worker_pids(server)[0]
        load = ModelInferLoad(server.target, images[0])
        try:
            wait_for(lambda: load.succeeded_between(0, time.monotonic()) >= 50 or None)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            pids = wait_for(
                lambda: replaced(server, victim), REPLACED_WITHIN_S, "the worker's replacement"
            )
            time.sleep(max(0.0, killed_at + AFTER_KILL_S - time.monotonic()))
            after_kill = load.succeeded_between(killed_at, killed_at + AFTER_KILL_S)
        finally:
            load.stop()
        assert after_kill >= CALLS_AFTER_KILL, (after_kill, load.codes)
        # Only the calls in flight on the dead worker's connections may fail, as UNAVAILABLE.
        assert set(load.codes) <= {"OK", "UNAVAILABLE"}, load.codes
        assert load.codes["UNAVAILABLE"] < load.codes["OK"] / 10, load.codes
        assert len(pids) == WORKERS
        assert victim not in pids
        samples = scrape(server.metrics_port)
        assert total(samples, "mnist_serving_worker_restarts_total") == 1
        assert total(samples, "mnist_serving_workers", state="down") == 0
        # SERVING and classifying right, on every worker (the replacement among them).
        channels, reached = pids_reached(server)
        try:
            assert reached == set(pids), (reached, pids)
            for channel in channels:
                health = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S
                )
                assert health.status == health_pb2.HealthCheckResponse.SERVING
                reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                    raw_infer_request(images[:8]), timeout=RPC_TIMEOUT_S
                )
                predicted = output_array(reply, "probabilities").argmax(axis=1)
                assert (predicted == labels[:8]).all()
        finally:
            for channel in channels:
                channel.close()
        assert server.stop() == 0
    assert "worker died; replacing it while the others serve" in server.output()


def test_a_replacement_serves_the_repository_state_of_its_siblings(repository: Path) -> None:
    with start_workers(repository, "--model-control-mode", "explicit") as server:
        url = f"http://{server.http_target}/v2/repository/models/{SECOND_MODEL}/unload"
        request = urllib.request.Request(url, data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
            assert response.status == 200
        victim = worker_pids(server)[0]  # the leader, which orders every change
        os.kill(victim, signal.SIGKILL)
        pids = wait_for(
            lambda: replaced(server, victim), REPLACED_WITHIN_S, "the worker's replacement"
        )
        channels, reached = pids_reached(server)
        try:
            assert reached == set(pids), (reached, pids)
            for channel in channels:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for name, ready in ((MODEL, True), (SECOND_MODEL, False)):
                    answer = stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=RPC_TIMEOUT_S)
                    assert answer.ready is ready, name
            # The replacement leader orders changes again: a load reaches every worker.
            url = url.removesuffix("unload") + "load"
            request = urllib.request.Request(url, data=b"{}", method="POST")
            with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
                assert response.status == 200
            for channel in channels:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                answer = stub.ModelReady(
                    pb.ModelReadyRequest(name=SECOND_MODEL), timeout=RPC_TIMEOUT_S
                )
                assert answer.ready
        finally:
            for channel in channels:
                channel.close()


def test_a_crash_loop_stops_the_server_with_its_reason(repository: Path) -> None:
    with start_workers(repository) as server:
        for _ in range(RESTART_LIMIT + 1):
            victim = max(worker_pids(server))  # the same worker each time: the newest pid
            os.kill(victim, signal.SIGKILL)
            wait_for(
                partial(replaced_or_exited, server, victim),
                REPLACED_WITHIN_S,
                "the worker's replacement or the server's exit",
            )
        code = server.process.wait(timeout=CRASH_LOOP_EXIT_S)
        assert code == 1
    assert f"worker died {RESTART_LIMIT + 1} times within" in server.output()
    assert "a crash loop" in server.output()


def test_a_single_worker_is_restarted_too(
    repository: Path, sample_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = sample_digits
    with start_server_process(
        repository,
        "--workers",
        "1",
        "--supervise",
        "on",
        "--drain-delay-s",
        "0",
        timeout_s=START_TIMEOUT_S,
    ) as server:
        (victim,) = worker_pids(server)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            partial(replaced, server, victim, 1), REPLACED_WITHIN_S, "the worker's replacement"
        )
        with grpc.insecure_channel(server.target) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
                raw_infer_request(images[:8]), timeout=RPC_TIMEOUT_S
            )
        assert (output_array(reply, "probabilities").argmax(axis=1) == labels[:8]).all()
        assert total(scrape(server.metrics_port), "mnist_serving_worker_restarts_total") == 1
        assert server.stop() == 0
