"""SIGTERM under sustained load from clients that ignore health, and start-up faults.

(tests/integration/server/test_server_lifecycle.py covers clients that stop sending once
health says NOT_SERVING; here the clients keep calling straight through the shutdown, the
worst case a load balancer can produce.)
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import classifier_pb2_grpc
from tests.integration.server.classify_support import raw_request
from tests.support.channels import NOT_CONNECTED, REFUSED, SERVED, outcome
from tests.support.server_process import REPO_ROOT, start_server_process

DRAIN_DELAY_S = 2.0
GRACE_PERIOD_S = 20.0
WORKERS = 16
CHANNELS = 2
IMAGES_PER_CALL = 16
LOAD_BEFORE_SIGTERM_S = 1.5
LOAD_AFTER_SIGTERM_S = DRAIN_DELAY_S + 3.0
CALL_TIMEOUT_S = 10.0
REFUSED_RETRY_PAUSE_S = 0.05
# Calls sent this close to the end of the drain delay race the listener closing: they may
# be served or refused. Calls before the window must be served, calls after it refused.
RACE_WINDOW_S = 0.5
EXIT_TIMEOUT_S = GRACE_PERIOD_S + DRAIN_DELAY_S + 10
EXIT_START_FAILED = 1
CLI_TIMEOUT_S = 120


@dataclass(frozen=True)
class Call:
    sent_s: float  # relative to SIGTERM
    code: grpc.StatusCode
    labels_ok: bool
    outcome: str = SERVED


@pytest.mark.both_grpc_fronts
async def test_sigterm_under_load_serves_every_accepted_call_then_refuses_and_exits_zero(
    model_repository: Path, sample_digits: tuple[Any, Any], grpc_front: str
) -> None:
    digits = np.asarray(sample_digits[0][:IMAGES_PER_CALL], dtype=np.uint8)
    request = raw_request(digits)
    calls: list[Call] = []
    signalled_at = float("inf")
    with start_server_process(
        model_repository,
        "--drain-delay-s",
        str(DRAIN_DELAY_S),
        "--grace-period-s",
        str(GRACE_PERIOD_S),
        "--grpc-front",
        grpc_front,
    ) as server:
        expected: list[int] | None = None
        channels = [aio.insecure_channel(server.target) for _ in range(CHANNELS)]
        stop_at = time.monotonic() + LOAD_BEFORE_SIGTERM_S + LOAD_AFTER_SIGTERM_S

        async def worker(index: int) -> None:
            nonlocal expected
            stub = classifier_pb2_grpc.ClassifierStub(channels[index % CHANNELS])
            while time.monotonic() < stop_at:
                sent = time.monotonic()
                try:
                    response = await stub.Classify(request, timeout=CALL_TIMEOUT_S)
                except aio.AioRpcError as error:
                    calls.append(Call(sent - signalled_at, error.code(), True, outcome(error)))
                    await asyncio.sleep(REFUSED_RETRY_PAUSE_S)
                    continue
                labels = [p.label for p in response.predictions]
                expected = expected or labels
                calls.append(Call(sent - signalled_at, grpc.StatusCode.OK, labels == expected))

        workers = [asyncio.ensure_future(worker(i)) for i in range(WORKERS)]
        await asyncio.sleep(LOAD_BEFORE_SIGTERM_S)
        server.process.send_signal(signal.SIGTERM)
        signalled_at = time.monotonic()
        exit_code = await asyncio.to_thread(server.process.wait, EXIT_TIMEOUT_S)
        exited_after_s = time.monotonic() - signalled_at
        await asyncio.gather(*workers)
        for channel in channels:
            await channel.close()
        output = server.output()

    # Calls sent before SIGTERM have sent_s = -inf: they were sent before signalled_at was set.
    refusal_starts = DRAIN_DELAY_S - RACE_WINDOW_S
    served_before = [c for c in calls if c.sent_s < refusal_starts]
    during_drain = [c for c in served_before if c.sent_s >= 0]
    refused_after = [c for c in calls if c.sent_s > DRAIN_DELAY_S + RACE_WINDOW_S]
    assert exit_code == 0, output
    assert exited_after_s < DRAIN_DELAY_S + GRACE_PERIOD_S
    assert "stopped" in output
    # Zero accepted calls fail: everything sent before the drain delay ran out is served.
    assert {c.code for c in served_before} == {grpc.StatusCode.OK}
    assert during_drain, "no call was sent during the drain delay"
    assert all(c.labels_ok for c in calls)
    # New calls after the drain delay are refused as UNAVAILABLE; calls racing the end of
    # the drain delay are served or refused, never CANCELLED (drain_gate.py).
    assert refused_after, "no call was sent after the drain delay"
    assert {c.code for c in refused_after} == {grpc.StatusCode.UNAVAILABLE}
    # Refused, not dropped: the server's "shutting down", or no connection to be had.
    assert {c.outcome for c in refused_after} <= {REFUSED, NOT_CONNECTED}
    racing = {
        c.outcome for c in calls if refusal_starts <= c.sent_s <= DRAIN_DELAY_S + RACE_WINDOW_S
    }
    assert racing <= {SERVED, REFUSED, NOT_CONNECTED}


def run_server(model_repository: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_serving_server",
            "--model-repository",
            str(model_repository),
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--http-port",
            "-1",
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        cwd=REPO_ROOT,
        check=False,
    )


def model_file(repository: Path) -> Path:
    version_dir = repository / "mnist" / "1"
    version_dir.mkdir(parents=True)
    return version_dir / "model.onnx"


def assert_clear_start_failure(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == EXIT_START_FAILED, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("mnist-serving: error: "), last_line
    for phrase in phrases:
        assert phrase in last_line


def test_corrupt_model_file_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    path = model_file(tmp_path)
    path.write_bytes(b"this is not an ONNX model\x00\xff" * 10)
    assert_clear_start_failure(run_server(tmp_path), "cannot load ONNX model", str(path))


def test_truncated_model_file_exits_1_with_one_clear_line(tmp_path: Path, model_dir: Path) -> None:
    real = (model_dir / "model.onnx").read_bytes()
    path = model_file(tmp_path)
    path.write_bytes(real[: len(real) // 2])
    assert_clear_start_failure(run_server(tmp_path), "cannot load ONNX model", str(path))


def test_empty_model_file_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    path = model_file(tmp_path)
    path.write_bytes(b"")
    assert_clear_start_failure(run_server(tmp_path), str(path))
