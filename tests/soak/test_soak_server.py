"""Five minutes at moderate load against the server process: no errors, nothing grows.

Marked slow: `make soak` runs it (MNIST_SERVING_SOAK_S sets the length, 300 s by default).
Resident memory and open descriptors of the server are sampled throughout; after a
warm-up (allocator pools, gRPC buffers, histograms filling) a least-squares line through
the samples must be flat. The figures go to stdout and, with MNIST_SERVING_SOAK_REPORT,
to a JSON file (docs/robustness.md records one run).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from tests.integration.robustness.load import closed_loop
from tests.integration.server.classify_support import ReferenceModel, raw_request
from tests.soak.process_stats import slope_per_minute
from tests.soak.reports import publish
from tests.support.processes import BYTES_PER_MB, open_fds, rss_bytes
from tests.support.server_process import start_server_process

pytestmark = pytest.mark.slow

SOAK_S = float(os.environ.get("MNIST_SERVING_SOAK_S", "300"))
REPORT_ENV = "MNIST_SERVING_SOAK_REPORT"
# Moderate load: a few workers, a pause between calls, several images per call.
WORKERS = 4
PAUSE_S = 0.01
IMAGES_PER_CALL = 8
CALL_TIMEOUT_S = 10.0
MAX_CALLS = 10_000_000  # the duration bounds the run; this only guards against a runaway
SAMPLE_EVERY_S = 5.0
# Samples before this are warm-up (pools and buffers reach their working size).
WARM_UP_S = 30.0
# "Flat": a leak of 1 KB per call at ~300 calls/s would be ~18 MB/min, one fd per 100
# calls ~180/min; these bounds catch either while allowing allocator noise.
MAX_RSS_SLOPE_MB_PER_MIN = 2.0
MAX_FD_SLOPE_PER_MIN = 0.5
EXIT_TIMEOUT_S = 60
SOAK_TIMEOUT_S = int(SOAK_S) + 240


@pytest.mark.timeout(SOAK_TIMEOUT_S)
async def test_soak_moderate_load_no_errors_flat_memory_and_descriptors(
    model_repository: Path, model_dir: Path, sample_digits: tuple[Any, Any]
) -> None:
    digits = np.asarray(sample_digits[0][:IMAGES_PER_CALL], dtype=np.uint8)
    expected = ReferenceModel(model_dir).probabilities(digits).argmax(axis=1).tolist()
    samples: list[tuple[float, int, int]] = []
    with start_server_process(model_repository, "--drain-delay-s", "0") as server:
        started = time.monotonic()

        async def sample() -> None:
            while True:
                elapsed = time.monotonic() - started
                samples.append((elapsed, rss_bytes(server.pid), open_fds(server.pid)))
                await asyncio.sleep(SAMPLE_EVERY_S)

        sampler = asyncio.ensure_future(sample())
        try:
            result = await closed_loop(
                server.target,
                raw_request(digits),
                expected,
                workers=WORKERS,
                duration_s=SOAK_S,
                timeout_s=CALL_TIMEOUT_S,
                max_calls=MAX_CALLS,
                pause_s=PAUSE_S,
            )
        finally:
            sampler.cancel()
        exit_code = await asyncio.to_thread(server.stop, signal.SIGTERM, EXIT_TIMEOUT_S)

    steady = [s for s in samples if s[0] >= WARM_UP_S]
    times = [s[0] for s in steady]
    rss_mb = [s[1] / BYTES_PER_MB for s in steady]
    fds = [float(s[2]) for s in steady]
    rss_slope = slope_per_minute(times, rss_mb)
    fd_slope = slope_per_minute(times, fds)
    report = {
        "duration_s": round(result.wall_s, 1),
        "calls": result.calls,
        "calls_per_s": round(result.rate_per_s(), 1),
        "images_per_call": IMAGES_PER_CALL,
        "codes": {code.name: count for code, count in result.codes.items()},
        "wrong_answers": result.wrong_answers,
        "p99_ms": round(result.p99_ms(grpc.StatusCode.OK), 2),
        "rss_mb_first_last": [round(rss_mb[0], 1), round(rss_mb[-1], 1)],
        "rss_slope_mb_per_min": round(rss_slope, 3),
        "fds_first_last": [int(fds[0]), int(fds[-1])],
        "fd_slope_per_min": round(fd_slope, 3),
        "samples": len(steady),
    }
    publish("soak", report, REPORT_ENV)

    assert exit_code == 0
    assert set(result.codes) == {grpc.StatusCode.OK}, report
    assert result.wrong_answers == 0
    assert rss_slope < MAX_RSS_SLOPE_MB_PER_MIN, report
    assert fd_slope < MAX_FD_SLOPE_PER_MIN, report
