"""`AsyncClient` against the in-process server: parity with `Client`, and the overload
and deadline errors provoked on a real server (a held ONNX Runtime call)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest

from mnist_serving_client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidInputError,
    RetryPolicy,
    ServingStatus,
)
from tests.integration.conftest import RuntimeGate, StartApp, queue_depth
from tests.support.metrics import app_metric
from tests.support.waiting import wait_until

PARITY_IMAGES = 40
SPLIT_SIZE = 16
TINY_QUEUE_IMAGES = 4
SHORT_DEADLINE_S = 0.3
NO_RETRY = RetryPolicy(max_attempts=1)


def run_sync(target: str, images: np.ndarray) -> dict[str, Any]:
    with Client(target, max_images_per_request=SPLIT_SIZE) as client:
        return {
            "classify": client.classify(images, top_k=3),
            "one": client.classify_one(images[0]),
            "stream": list(client.classify_stream(list(images), images_per_request=3)),
            "health": client.health(),
            "metadata": client.metadata(),
        }


async def run_async(target: str, images: np.ndarray) -> dict[str, Any]:
    async with AsyncClient(target, max_images_per_request=SPLIT_SIZE) as client:
        return {
            "classify": await client.classify(images, top_k=3),
            "one": await client.classify_one(images[0]),
            "stream": [p async for p in client.classify_stream(list(images), images_per_request=3)],
            "health": await client.health(),
            "metadata": await client.metadata(),
        }


async def test_async_client_matches_the_sync_client(server, sample_digits):
    images, _ = sample_digits
    digits = images[:PARITY_IMAGES]
    # The blocking client runs in a thread: the in-process server shares this event loop.
    sync_results = await asyncio.to_thread(run_sync, server.target, digits)
    async_results = await run_async(server.target, digits)
    assert async_results == sync_results
    assert async_results["health"] is ServingStatus.SERVING
    assert len(async_results["classify"]) == PARITY_IMAGES
    assert async_results["stream"][0].probabilities.tolist() == pytest.approx(
        async_results["classify"][0].probabilities.tolist()
    )


async def test_concurrent_calls_share_one_client(server, sample_digits):
    images, _ = sample_digits
    async with AsyncClient(server.target) as client:
        predictions = await asyncio.gather(*(client.classify_one(d) for d in images[:32]))
    reference = await asyncio.to_thread(run_sync, server.target, images[:32])
    assert [p.label for p in predictions] == [p.label for p in reference["classify"]]


async def test_request_larger_than_the_queue_is_invalid_not_overloaded(start_app: StartApp):
    app = await start_app(
        max_queue_size=TINY_QUEUE_IMAGES, max_images_per_request=TINY_QUEUE_IMAGES
    )
    async with AsyncClient(app.target, retry=NO_RETRY) as client:
        with pytest.raises(InvalidInputError) as caught:
            await client.classify(np.zeros((TINY_QUEUE_IMAGES + 1, 28, 28), np.uint8))
    # Permanent, so not RESOURCE_EXHAUSTED (which clients retry as load).
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {TINY_QUEUE_IMAGES} per request" in caught.value.message


async def test_full_queue_is_retried_until_it_drains(
    start_app: StartApp, runtime_gate: RuntimeGate, sample_digits
):
    images, _ = sample_digits
    app = await start_app(
        max_queue_size=TINY_QUEUE_IMAGES,
        max_batch_size=TINY_QUEUE_IMAGES,
        max_images_per_request=TINY_QUEUE_IMAGES,
    )
    retry = RetryPolicy(max_attempts=5, initial_backoff_s=0.5, max_backoff_s=2.0)
    async with AsyncClient(app.target, retry=retry, timeout_s=30) as client:
        runtime_gate.close()
        in_compute = asyncio.ensure_future(client.classify_one(images[0]))
        await runtime_gate.wait_entered()
        queued = asyncio.ensure_future(client.classify(images[1 : 1 + TINY_QUEUE_IMAGES]))
        await wait_until(lambda: queue_depth(app) == TINY_QUEUE_IMAGES, "full")

        retried = asyncio.ensure_future(client.classify_one(images[9]))
        await wait_until(
            lambda: app_metric(app, "mnist_serving_rejections_total", reason="queue_full") >= 1,
            "the first attempt to be shed",
        )
        runtime_gate.open()
        prediction = await retried
        await asyncio.gather(in_compute, queued)
    assert prediction.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert app_metric(app, "mnist_serving_rejections_total", reason="queue_full") >= 1


async def test_slow_server_raises_deadline_exceeded(
    start_app: StartApp, runtime_gate: RuntimeGate, sample_digits
):
    images, _ = sample_digits
    app = await start_app()
    async with AsyncClient(app.target, timeout_s=SHORT_DEADLINE_S) as client:
        runtime_gate.close()
        held = asyncio.ensure_future(client.classify_one(images[0], timeout_s=30))
        await runtime_gate.wait_entered()
        with pytest.raises(DeadlineExceededError) as caught:
            await client.classify_one(images[1])
        runtime_gate.open()
        await held
    assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
