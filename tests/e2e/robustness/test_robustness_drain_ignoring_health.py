"""SIGTERM while callers that never look at health keep sending single-image V2 calls.

A load balancer that has not caught up yet keeps sending: every call that reaches the
server during shutdown must end OK (served) or UNAVAILABLE (refused, safe to retry), never
CANCELLED (the caller cannot tell whether its work was done, and nobody retries it) and
never INTERNAL. Both with one connection per caller and with every caller on one connection.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from tests.integration.v2.v2_helpers import raw_infer_request
from tests.support.server_process import start_server_process

CALLERS = 32
DRAIN_DELAY_S = 0.5
GRACE_PERIOD_S = 10.0
LOAD_BEFORE_SIGTERM_S = 1.0
# After the process exits, callers keep going a little: those calls find no server and end
# UNAVAILABLE; they check that nothing else shows up when the port closes.
LOAD_AFTER_EXIT_S = 0.3
CALL_TIMEOUT_S = 10.0
ERROR_PAUSE_S = 0.005
EXIT_TIMEOUT_S = GRACE_PERIOD_S + DRAIN_DELAY_S + 20


@pytest.mark.parametrize("channels", [CALLERS, 1], ids=["channel-per-caller", "one-channel"])
async def test_sigterm_under_load_ends_every_call_ok_or_unavailable(
    model_repository: Path, channels: int
) -> None:
    request = raw_infer_request(np.zeros((1, 28, 28), dtype=np.uint8))
    codes: collections.Counter[grpc.StatusCode] = collections.Counter()
    details: dict[grpc.StatusCode, str] = {}
    with start_server_process(
        model_repository,
        "--drain-delay-s",
        str(DRAIN_DELAY_S),
        "--grace-period-s",
        str(GRACE_PERIOD_S),
    ) as server:
        pool = [aio.insecure_channel(server.target) for _ in range(channels)]
        exited = asyncio.Event()
        stop_at = float("inf")

        async def caller(index: int) -> None:
            stub = pb_grpc.GRPCInferenceServiceStub(pool[index % channels])
            while time.monotonic() < stop_at:
                try:
                    await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
                    codes[grpc.StatusCode.OK] += 1
                except aio.AioRpcError as error:
                    codes[error.code()] += 1
                    details.setdefault(error.code(), str(error.details()))
                    await asyncio.sleep(ERROR_PAUSE_S)

        callers = [asyncio.ensure_future(caller(i)) for i in range(CALLERS)]
        await asyncio.sleep(LOAD_BEFORE_SIGTERM_S)
        served_before_sigterm = codes[grpc.StatusCode.OK]
        server.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(server.process.wait, EXIT_TIMEOUT_S)
        exited.set()
        stop_at = time.monotonic() + LOAD_AFTER_EXIT_S
        await asyncio.gather(*callers)
        for channel in pool:
            await channel.close()
        output = server.output()

    assert exit_code == 0, output
    assert served_before_sigterm > 0
    assert codes[grpc.StatusCode.UNAVAILABLE] > 0, "no call reached the server after it stopped"
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, (codes, details)
