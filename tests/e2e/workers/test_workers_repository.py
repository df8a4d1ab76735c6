"""`--workers 2`: one repository state. A change made through any worker (gRPC or HTTP), or
found by polling, is served by every worker when the call returns; the index and the
statistics describe the whole server; a swap under load fails no call.

Connections land on workers by the kernel's hash; each check opens CONNECTIONS of them
and first proves that both workers hold some, so "every connection agrees" means "every
worker agrees".
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.core.cores import available_cores
from tests.integration.v2.v2_helpers import raw_infer_request
from tests.repository_models import (
    MODEL_FILE,
    answered_by,
    reference_probabilities,
    stage_version,
)
from tests.support.channels import open_channels
from tests.support.load import ModelInferLoad, served_probabilities
from tests.support.processes import established_server_sockets, socket_inodes_of, worker_pids
from tests.support.server_process import ServerProcess, start_server_process

WORKERS = 2
RPC_TIMEOUT_S = 30
MODEL = "mnist"
CONNECTIONS = 16  # all on one of two workers: chance 2**-15
CALLS_BEFORE_SWAP = 200
CALLS_AFTER_SWAP = 200
START_TIMEOUT_S = 120
POLL_SECS = 0.2
POLL_WAIT_S = 60.0
WAIT_STEP_S = 0.1
STATISTICS_CALLS = 40


@pytest.fixture
def repository(model_repository: Path, tmp_path: Path) -> Path:
    """A repository of its own (the tests add versions): mnist/1 only."""
    repository = tmp_path / "repository"
    shutil.copytree(model_repository / MODEL, repository / MODEL)
    return repository


def start_workers(repository: Path, *args: str) -> ServerProcess:
    return start_server_process(
        repository, "--workers", str(WORKERS), "--drain-delay-s", "0", *args,
        timeout_s=START_TIMEOUT_S,
    )  # fmt: skip


def add_version(repository: Path, version: int) -> dict[str, Path]:
    """A new version folder, complete before it appears (written, then renamed).

    Its logits are scaled (tests/repository_models.py), so its probabilities tell it from
    version 1's. Returns the model file of every version, by version.
    """
    stage_version(repository / MODEL / "1" / MODEL_FILE, repository, MODEL, version)
    return {v: repository / MODEL / v / MODEL_FILE for v in ("1", str(version))}


class Workers:
    """CONNECTIONS channels to the server, proven to reach every worker."""

    def __init__(self, server: ServerProcess) -> None:
        self.channels = open_channels(server.target, CONNECTIONS)
        established = established_server_sockets(server.grpc_port)
        per_worker = [len(socket_inodes_of(pid) & established) for pid in worker_pids(server)]
        assert len(per_worker) == WORKERS, per_worker
        assert all(per_worker), per_worker
        self.stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in self.channels]

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def ready(self, version: str) -> set[bool]:
        """ModelReady(mnist, version) as each connection's worker answers it."""
        request = pb.ModelReadyRequest(name=MODEL, version=version)
        return {stub.ModelReady(request, timeout=RPC_TIMEOUT_S).ready for stub in self.stubs}

    def indexes(self) -> list[list[tuple[str, str, str]]]:
        request = pb.RepositoryIndexRequest()
        return [
            [(m.name, m.version, m.state) for m in stub.RepositoryIndex(request).models]
            for stub in self.stubs
        ]


@pytest.fixture
def workers(repository: Path) -> Iterator[tuple[ServerProcess, Workers]]:
    with start_workers(repository) as server:
        connections = Workers(server)
        try:
            yield server, connections
        finally:
            connections.close()


def test_a_swap_under_load_reaches_every_worker_before_the_call_returns(
    workers: tuple[ServerProcess, Workers],
    repository: Path,
    sample_digits: tuple[np.ndarray, np.ndarray],
) -> None:
    server, connections = workers
    assert connections.ready("1") == {True}
    load = ModelInferLoad(server.target, sample_digits[0][0])
    try:
        load.expect({"1": repository / MODEL / "1" / MODEL_FILE})
        load.wait_for(CALLS_BEFORE_SWAP)
        load.expect(add_version(repository, 2))
        # Through one connection (one worker): the load returns once both workers serve v2.
        connections.stubs[0].RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name=MODEL), timeout=RPC_TIMEOUT_S
        )
        assert connections.ready("2") == {True}
        assert connections.ready("1") == {False}  # latest 1: v1 retired in every worker
        load.wait_for(load.calls() + CALLS_AFTER_SWAP)
    finally:
        load.stop()
    assert set(load.codes) == {"OK"}, load.codes  # zero failed calls across the swap
    # Every answer was computed by the version it names (version 2's logits are scaled).
    assert load.mismatches == [], load.mismatches[:5]
    assert load.versions["1"] >= CALLS_BEFORE_SWAP
    assert load.versions["2"] >= CALLS_AFTER_SWAP
    # One index for the whole server, whichever worker answers.
    indexes = connections.indexes()
    assert all(index == indexes[0] for index in indexes), indexes
    assert (MODEL, "2", "READY") in indexes[0]


def test_http_unload_and_load_through_one_worker_apply_to_all(
    workers: tuple[ServerProcess, Workers],
) -> None:
    server, connections = workers
    base = f"http://{server.http_target}/v2/repository/models/{MODEL}"
    for action, ready in (("unload", False), ("load", True)):
        request = urllib.request.Request(f"{base}/{action}", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=RPC_TIMEOUT_S) as response:
            assert response.status == 200
        assert connections.ready("") == {ready}, action
        index = urllib.request.Request(f"http://{server.http_target}/v2/repository/index", b"{}")
        with urllib.request.urlopen(index, timeout=RPC_TIMEOUT_S) as response:
            rows = json.loads(response.read())
        states = {(row["name"], row["state"]) for row in rows}
        assert states == {(MODEL, "READY" if ready else "UNAVAILABLE")}, rows


def test_statistics_add_up_every_worker(
    workers: tuple[ServerProcess, Workers], sample_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    _, connections = workers
    request = raw_infer_request(sample_digits[0][:1])
    for call in range(STATISTICS_CALLS):
        connections.stubs[call % CONNECTIONS].ModelInfer(request, timeout=RPC_TIMEOUT_S)
    answers = []
    for stub in connections.stubs:
        (stats,) = stub.ModelStatistics(
            pb.ModelStatisticsRequest(name=MODEL), timeout=RPC_TIMEOUT_S
        ).model_stats
        answers.append((stats.inference_count, stats.inference_stats.success.count))
    # Calls went to both workers; every worker reports the server's total.
    assert set(answers) == {(STATISTICS_CALLS, STATISTICS_CALLS)}, answers


def test_poll_mode_applies_a_new_version_in_every_worker(
    repository: Path, sample_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images = sample_digits[0][:2]
    with start_workers(
        repository, "--model-control-mode", "poll", "--repository-poll-secs", str(POLL_SECS)
    ) as server:
        connections = Workers(server)
        try:
            model_files = add_version(repository, 2)
            deadline = time.monotonic() + POLL_WAIT_S
            while (MODEL, "2", "READY") not in connections.indexes()[0]:
                assert time.monotonic() < deadline, connections.indexes()[0]
                time.sleep(WAIT_STEP_S)
            # The merged index says READY only once every worker has the version.
            assert connections.ready("2") == {True}
            # And every worker computes with it: its probabilities, not version 1's.
            references = {v: reference_probabilities(f, images) for v, f in model_files.items()}
            computed = {
                answered_by(
                    served_probabilities(
                        stub.ModelInfer(raw_infer_request(images), timeout=RPC_TIMEOUT_S)
                    ),
                    references,
                )
                for stub in connections.stubs
            }
            assert computed == {"2"}
        finally:
            connections.close()


def test_workers_auto_starts_one_worker_per_usable_core(repository: Path) -> None:
    cores = available_cores()
    with start_server_process(repository, "--workers", "auto", timeout_s=START_TIMEOUT_S) as auto:
        expected = cores if cores > 1 else 0  # one core: a plain single process
        assert len(worker_pids(auto)) == expected


def test_workers_auto_follows_the_cpu_affinity(repository: Path) -> None:
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})  # the server inherits one core
    try:
        server = start_server_process(repository, "--workers", "auto", timeout_s=START_TIMEOUT_S)
    finally:
        os.sched_setaffinity(0, allowed)
    with server:
        assert worker_pids(server) == []  # one usable core: no worker processes
