"""Faults inside a real in-process server: a failing batch, clients vanishing mid-stream.

(The single-call runtime failure is in tests/integration/server/test_server_errors.py;
here several calls share batches, and exactly one batch fails.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.core.runtime import ModelRuntime
from mnist_serving_server.grpc_api.grpc_errors import INTERNAL_MESSAGE
from tests.integration.conftest import RuntimeGate, StartApp, queue_depth
from tests.integration.server.classify_support import raw_request
from tests.integration.v2.v2_helpers import raw_infer_request
from tests.support.metrics import app_metric
from tests.support.waiting import wait_until

SECRET_DETAIL = "device lost at /opt/secret/kernel.cu:7"
STREAM_ITEMS_IN_FLIGHT = 5
STREAMS_PER_API = 3


def one_digit(sample_digits: tuple[Any, Any], index: int = 0) -> np.ndarray:
    return np.asarray(sample_digits[0][index : index + 1], dtype=np.uint8)


async def test_a_failing_batch_fails_only_its_own_calls(
    start_app: StartApp,
    runtime_gate: RuntimeGate,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    sample_digits: tuple[Any, Any],
) -> None:
    """Batch 1 (held in the runtime) and batch 3 succeed; batch 2 (two calls) fails."""
    runs = 0
    failing_run = -1
    gated_run = ModelRuntime.run  # already passes through the gate

    def run_or_fail(self: ModelRuntime, pixels: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal runs
        runs += 1
        if runs == failing_run:
            raise RuntimeError(SECRET_DETAIL)
        return gated_run(self, pixels)

    monkeypatch.setattr(ModelRuntime, "run", run_or_fail)
    app = await start_app()  # warm-up runs the real model
    async with aio.insecure_channel(app.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        runtime_gate.close()
        first = asyncio.ensure_future(stub.Classify(raw_request(one_digit(sample_digits, 0))))
        await runtime_gate.wait_entered()
        failing_run = runs + 1  # the next batch: both calls queued behind the held one
        second = asyncio.ensure_future(stub.Classify(raw_request(one_digit(sample_digits, 1))))
        third = asyncio.ensure_future(stub.Classify(raw_request(one_digit(sample_digits, 2))))
        await wait_until(lambda: queue_depth(app) == 2, "two queued calls")
        runtime_gate.open()
        outcomes = await asyncio.gather(first, second, third, return_exceptions=True)
        after = await stub.Classify(raw_request(one_digit(sample_digits, 3)))

    assert isinstance(outcomes[0], classifier_pb2.ClassifyResponse)
    for failed in outcomes[1:]:
        assert isinstance(failed, aio.AioRpcError)
        assert failed.code() is grpc.StatusCode.INTERNAL
        assert failed.details() == INTERNAL_MESSAGE
    assert len(after.predictions) == 1
    assert SECRET_DETAIL in caplog.text  # the details are logged, never sent
    assert app_metric(app, "mnist_serving_requests_total", method="Classify", code="INTERNAL") == 2
    assert app_metric(app, "mnist_serving_requests_total", method="Classify", code="OK") == 2
    assert app.ready


async def abandoned_requests(
    first: Any, release: asyncio.Event, more: list[Any]
) -> AsyncIterator[Any]:
    yield first
    for item in more:
        yield item
    await release.wait()  # never set: the client goes away with the stream open


def task_kinds() -> Counter[str]:
    """Pending tasks on this loop (the server's and gRPC's), counted by coroutine name.

    By name, not identity: gRPC keeps one accept task per method and replaces it with a
    new one for every call, so the set of task objects changes while nothing leaks.
    """
    current = asyncio.current_task()
    return Counter(
        getattr(task.get_coro(), "__qualname__", "?")
        for task in asyncio.all_tasks()
        if task is not current and not task.done()
    )


def no_more_tasks_than(before: Counter[str]) -> bool:
    return all(count <= before[kind] for kind, count in task_kinds().items())


async def test_clients_vanishing_mid_stream_free_everything(
    start_app: StartApp, runtime_gate: RuntimeGate, sample_digits: tuple[Any, Any]
) -> None:
    """Streams on both APIs with work queued and in compute; the clients' channels close.
    Afterwards: in-flight gauge 0, queue empty, no task left behind, the server serves."""
    app = await start_app()
    digit = one_digit(sample_digits)
    # One stream call first: gRPC starts some tasks of its own lazily, once per server.
    async with aio.insecure_channel(app.target) as channel:
        stream = classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream()
        await stream.write(raw_request(digit))
        await stream.done_writing()
        assert len([reply async for reply in stream]) == 1
    tasks_before = task_kinds()
    runtime_gate.close()
    channels = [aio.insecure_channel(app.target) for _ in range(STREAMS_PER_API)]
    calls: list[Any] = []
    release = asyncio.Event()
    for channel in channels:
        more_classify = [raw_request(digit)] * STREAM_ITEMS_IN_FLIGHT
        more_v2 = [raw_infer_request(digit)] * STREAM_ITEMS_IN_FLIGHT
        calls.append(
            classifier_pb2_grpc.ClassifierStub(channel).ClassifyStream(
                abandoned_requests(raw_request(digit), release, more_classify)
            )
        )
        calls.append(
            pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(
                abandoned_requests(raw_infer_request(digit), release, more_v2)
            )
        )
    await runtime_gate.wait_entered()
    await wait_until(
        lambda: app_metric(app, "mnist_serving_inflight_requests") == len(calls),
        "every stream to be open on the server",
    )
    await wait_until(lambda: queue_depth(app) > 0, "stream items queued")
    for channel in channels:  # the clients vanish: their connections close
        await channel.close()
    runtime_gate.open()

    await wait_until(
        lambda: app_metric(app, "mnist_serving_inflight_requests") == 0, "the in-flight gauge at 0"
    )
    await wait_until(lambda: queue_depth(app) == 0, "an empty queue")
    await wait_until(lambda: no_more_tasks_than(tasks_before), "the streams' tasks to end")
    # Each abandoned stream is counted once, as CANCELLED (the warm-up stream was OK).
    for method in ("ClassifyStream", "ModelStreamInfer"):
        counted = app_metric(app, "mnist_serving_requests_total", method=method, code="CANCELLED")
        assert counted == STREAMS_PER_API
    async with aio.insecure_channel(app.target) as channel:
        response = await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            raw_infer_request(digit)
        )
    assert response.outputs
    assert isinstance(response, pb.ModelInferResponse)
    assert app.ready
