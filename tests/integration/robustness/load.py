"""A bounded closed-loop load: N workers call Classify back to back, each call timed.

Used by the overload tests and the soak. Every call carries a deadline; each outcome is
recorded (status, how long it took, how much later than its deadline it ended), so tests
can check that the excess is shed quickly and that no call outlives its deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np
from grpc import aio

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc

PERCENTILE_99 = 99.0
MS_PER_S = 1000.0


@dataclass
class LoadResult:
    """Every call's status and latency, in seconds."""

    codes: Counter[grpc.StatusCode] = field(default_factory=Counter)
    latency_s: dict[grpc.StatusCode, list[float]] = field(default_factory=dict)
    overrun_s: list[float] = field(default_factory=list)  # end - deadline, for late calls
    wrong_answers: int = 0
    wall_s: float = 0.0

    def record(self, code: grpc.StatusCode, elapsed_s: float, timeout_s: float) -> None:
        self.codes[code] += 1
        self.latency_s.setdefault(code, []).append(elapsed_s)
        if elapsed_s > timeout_s:
            self.overrun_s.append(elapsed_s - timeout_s)

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    def p99_ms(self, code: grpc.StatusCode) -> float:
        values = self.latency_s.get(code)
        if not values:
            return float("nan")
        return float(np.percentile(np.asarray(values), PERCENTILE_99)) * MS_PER_S

    def rate_per_s(self, code: grpc.StatusCode | None = None) -> float:
        count = self.calls if code is None else self.codes[code]
        return count / self.wall_s if self.wall_s else 0.0


async def closed_loop(
    target: str,
    request: classifier_pb2.ClassifyRequest,
    expected_labels: list[int],
    *,
    workers: int,
    duration_s: float,
    timeout_s: float,
    max_calls: int,
    pause_s: float = 0.0,
    channels: int = 1,
) -> LoadResult:
    """`workers` tasks call Classify until `duration_s` passes or `max_calls` are made.

    `pause_s` between a worker's calls gives a moderate load (the soak); 0 drives as hard
    as the client can. Replies are checked against `expected_labels`.
    """
    result = LoadResult()
    budget = [max_calls]
    open_channels = [aio.insecure_channel(target) for _ in range(channels)]
    stubs = [classifier_pb2_grpc.ClassifierStub(channel) for channel in open_channels]
    stop_at = time.monotonic() + duration_s

    async def worker(index: int) -> None:
        stub = stubs[index % len(stubs)]
        while time.monotonic() < stop_at and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            try:
                response = await stub.Classify(request, timeout=timeout_s)
            except aio.AioRpcError as error:
                result.record(error.code(), time.perf_counter() - started, timeout_s)
            else:
                result.record(grpc.StatusCode.OK, time.perf_counter() - started, timeout_s)
                if [p.label for p in response.predictions] != expected_labels:
                    result.wrong_answers += 1
            if pause_s:
                await asyncio.sleep(pause_s)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(i) for i in range(workers)))
    finally:
        result.wall_s = time.perf_counter() - started
        for channel in open_channels:
            await channel.close()
    return result
