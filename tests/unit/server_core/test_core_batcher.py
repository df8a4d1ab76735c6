"""DynamicBatcher alone, no grpc: real numpy work in the worker thread, real asyncio.

The runtime is "blocked" with a threading.Event where a test needs requests to pile up,
and time is a FakeClock that a test moves where it is about deadlines, queue waits or the
queue delay: no test sleeps a guessed time, and the waits and compute times reported are exact.
Real time passes only in tests about real waiting (a queue delay's timer, drain and stop
timeouts), each bounded by a gate or a timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_serving_server.core import batcher as batcher_module
from mnist_serving_server.core.batcher import DynamicBatcher
from mnist_serving_server.core.errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotReadyError,
    QueueFullError,
)

IMAGE_SHAPE = (1, 28, 28)
# Bounds on how long a test waits for something that should happen at once (not timings).
EVENT_WAIT_S = 10.0
# How far a test moves the FakeClock while the runtime is blocked. Whole seconds, from a
# whole start: the differences the batcher computes come out exact in floating point.
HOLD_S = 2.0
CLOCK_START_S = 1000.0
# Pixel values that mark a request, so a test can tell whether it reached the model.
GATE_MARK = 1
DROPPED_MARK = 250
POISON_MARK = 99


def images(count: int, value: int | None = None, *, seed: int = 0) -> np.ndarray:
    """uint8 [count,1,28,28]: random pixels, or all `value`."""
    if value is not None:
        return np.full((count, *IMAGE_SHAPE), value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, (count, *IMAGE_SHAPE), dtype=np.uint8)


def echo_outputs(batch: np.ndarray) -> dict[str, np.ndarray]:
    """Two outputs that identify each row: the pixels themselves and their sum."""
    return {
        "echo": batch.copy(),
        "pixel_sum": batch.reshape(len(batch), -1).sum(axis=1, dtype=np.int64),
    }


class GatedModel:
    """A run_batch that records every batch and, while the gate is closed, blocks in it."""

    def __init__(self, *, gated: bool = False) -> None:
        self.batches: list[np.ndarray] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def __call__(self, batch: np.ndarray) -> Mapping[str, np.ndarray]:
        self.batches.append(batch.copy())
        self.entered.set()
        if not self.gate.wait(EVENT_WAIT_S):
            raise TimeoutError("test gate never opened")
        return echo_outputs(batch)

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    def saw_value(self, value: int) -> bool:
        return any(bool((batch == value).all(axis=(1, 2, 3)).any()) for batch in self.batches)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, EVENT_WAIT_S)


class FakeClock:
    """A monotonic clock that moves only when the test advances it (read by the worker too)."""

    def __init__(self) -> None:
        self.now = CLOCK_START_S

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingObserver:
    def __init__(self) -> None:
        self.depths: list[int] = []
        self.batches: list[tuple[int, list[float], float]] = []
        self.rejections: list[str] = []

    def on_queue_depth(self, images: int) -> None:
        self.depths.append(images)

    def on_batch(self, batch_size: int, queue_waits_s: Sequence[float], compute_s: float) -> None:
        self.batches.append((batch_size, list(queue_waits_s), compute_s))

    def on_rejected(self, reason: str) -> None:
        self.rejections.append(reason)


@pytest.fixture
def model() -> GatedModel:
    return GatedModel(gated=True)


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def batcher(
    model: GatedModel, observer: RecordingObserver, clock: FakeClock
) -> AsyncIterator[DynamicBatcher]:
    instance = DynamicBatcher(
        model, max_batch_size=8, max_queue_size=64, observer=observer, clock=clock
    )
    await instance.start()
    yield instance
    model.gate.set()
    await instance.stop()


async def block_runtime(batcher: DynamicBatcher, model: GatedModel) -> asyncio.Task[Any]:
    """Put one marked image in the (closed) worker, so later requests queue up behind it."""
    task = asyncio.create_task(batcher.submit(images(1, GATE_MARK)))
    await model.wait_entered()
    return task


async def until_queued(batcher: DynamicBatcher, image_count: int) -> None:
    """Let submit() tasks run until `image_count` images sit in the queue."""
    for _ in range(1000):
        if batcher.queue_depth >= image_count:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"queue depth {batcher.queue_depth}, expected {image_count}")


def assert_own_rows(result: Mapping[str, np.ndarray], sent: np.ndarray) -> None:
    np.testing.assert_array_equal(result["echo"], sent)
    np.testing.assert_array_equal(
        result["pixel_sum"], sent.reshape(len(sent), -1).sum(axis=1, dtype=np.int64)
    )


async def test_single_request_gets_its_own_rows() -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model)
    await batcher.start()
    sent = images(3)
    result = await batcher.submit(sent)
    assert_own_rows(result, sent)
    assert model.sizes == [3]
    await batcher.stop()


async def test_concurrent_callers_each_get_their_own_rows_in_shared_batches(
    batcher: DynamicBatcher, model: GatedModel, observer: RecordingObserver, clock: FakeClock
) -> None:
    gate_task = await block_runtime(batcher, model)
    sent = [images(1 + index % 3, seed=index) for index in range(30)]
    tasks = [asyncio.create_task(batcher.submit(pixels)) for pixels in sent]
    await until_queued(batcher, sum(len(pixels) for pixels in sent))
    clock.advance(HOLD_S)  # every queued request has now waited this long
    model.gate.set()
    results = await asyncio.gather(*tasks)
    for result, pixels in zip(results, sent, strict=True):
        assert_own_rows(result, pixels)
    await gate_task
    # 60 images (1, 2, 3, 1, 2, 3, ...) drained in full batches of 8, then the rest.
    assert model.sizes[1:] == [8] * 7 + [4]
    assert [size for size, _, _ in observer.batches] == model.sizes
    queued_waits = [wait for _, waits, _ in observer.batches[1:] for wait in waits]
    # One wait per slice: the 30 requests, plus one for each of the five that straddle a
    # batch boundary (at 8, 16, 32, 40 and 56 images; 24 and 48 fall between requests).
    # Every one of them was queued before the clock moved and started after it.
    assert queued_waits == [HOLD_S] * 35
    assert batcher.queue_depth == 0


async def test_many_concurrent_single_images_are_batched_without_mixups() -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model, max_batch_size=64)
    await batcher.start()
    sent = [images(1, seed=index) for index in range(500)]
    results = await asyncio.gather(*(batcher.submit(pixels) for pixels in sent))
    for result, pixels in zip(results, sent, strict=True):
        assert_own_rows(result, pixels)
    # Every submit() runs before the woken loop does: the 500 are queued at once, then
    # taken greedily, 64 at a time.
    assert model.sizes == [64] * 7 + [52]
    await batcher.stop()


async def test_large_request_is_split_and_reassembled_in_order(
    batcher: DynamicBatcher, model: GatedModel
) -> None:
    gate_task = await block_runtime(batcher, model)
    before, large, after = images(3, seed=1), images(21, seed=2), images(2, seed=3)
    tasks = [asyncio.create_task(batcher.submit(pixels)) for pixels in (before, large, after)]
    await until_queued(batcher, 26)
    model.gate.set()
    results = await asyncio.gather(*tasks)
    for result, pixels in zip(results, (before, large, after), strict=True):
        assert_own_rows(result, pixels)
    await gate_task
    # Chunks share batches with their neighbours: 3 + 5 of the large one, 8, 8, then 2.
    assert model.sizes == [1, 8, 8, 8, 2]


async def test_request_larger_than_a_batch_alone() -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model, max_batch_size=4)
    await batcher.start()
    sent = images(10, seed=5)
    assert_own_rows(await batcher.submit(sent), sent)
    assert model.sizes == [4, 4, 2]
    await batcher.stop()


async def test_expired_request_is_dropped_before_compute(
    batcher: DynamicBatcher, model: GatedModel, observer: RecordingObserver, clock: FakeClock
) -> None:
    gate_task = await block_runtime(batcher, model)
    short = asyncio.create_task(batcher.submit(images(2, DROPPED_MARK), deadline=clock() + HOLD_S))
    kept = images(1, seed=7)
    kept_task = asyncio.create_task(batcher.submit(kept, deadline=clock() + HOLD_S + 1))
    await until_queued(batcher, 3)
    clock.advance(HOLD_S)  # the short deadline is now (expired: <=), the kept one 1 s ahead
    model.gate.set()
    with pytest.raises(DeadlineExceededError, match="deadline"):
        await short
    assert_own_rows(await kept_task, kept)
    await gate_task
    assert not model.saw_value(DROPPED_MARK)
    assert model.sizes == [1, 1]
    assert observer.rejections == ["deadline"]
    assert batcher.queue_depth == 0


async def test_deadline_already_passed_is_rejected_at_submit(
    batcher: DynamicBatcher, model: GatedModel, observer: RecordingObserver, clock: FakeClock
) -> None:
    model.gate.set()
    with pytest.raises(DeadlineExceededError):
        # A deadline of right now has passed: the check is deadline <= now.
        await batcher.submit(images(1, DROPPED_MARK), deadline=clock())
    assert model.batches == []
    assert observer.rejections == ["deadline"]


async def test_cancelled_request_is_dropped_before_compute(
    batcher: DynamicBatcher, model: GatedModel, observer: RecordingObserver
) -> None:
    gate_task = await block_runtime(batcher, model)
    doomed = asyncio.create_task(batcher.submit(images(2, DROPPED_MARK)))
    kept = images(1, seed=8)
    kept_task = asyncio.create_task(batcher.submit(kept))
    await until_queued(batcher, 3)
    doomed.cancel()
    model.gate.set()
    assert_own_rows(await kept_task, kept)
    await gate_task
    assert doomed.cancelled()
    assert not model.saw_value(DROPPED_MARK)
    assert observer.rejections == ["cancelled"]
    assert model.sizes == [1, 1]


async def test_queue_full_is_rejected_at_once_and_space_is_reused() -> None:
    model = GatedModel(gated=True)
    observer = RecordingObserver()
    batcher = DynamicBatcher(model, max_batch_size=8, max_queue_size=10, observer=observer)
    await batcher.start()
    gate_task = await block_runtime(batcher, model)
    first = asyncio.create_task(batcher.submit(images(6, seed=1)))
    await until_queued(batcher, 6)
    with pytest.raises(QueueFullError, match=r"queue full: 6 images queued, limit 10; retry"):
        await batcher.submit(images(5))
    # Larger than the whole queue: permanent (a retry can never fit), so invalid input.
    with pytest.raises(InvalidInputError, match="larger than the queue limit 10"):
        await batcher.submit(images(11))
    fits = images(4, seed=2)
    fits_task = asyncio.create_task(batcher.submit(fits))
    await until_queued(batcher, 10)
    assert batcher.queue_depth == 10
    model.gate.set()
    assert_own_rows(await fits_task, fits)
    await first
    await gate_task
    assert observer.rejections == ["queue_full"]
    assert batcher.queue_depth == 0
    await batcher.stop()


async def test_model_exception_fails_every_caller_of_that_batch_only(
    observer: RecordingObserver,
) -> None:
    gate = threading.Event()
    entered = threading.Event()
    failure = ValueError("model exploded")

    def run_batch(batch: np.ndarray) -> Mapping[str, np.ndarray]:
        entered.set()
        gate.wait(EVENT_WAIT_S)
        if (batch == POISON_MARK).all(axis=(1, 2, 3)).any():
            raise failure
        return echo_outputs(batch)

    batcher = DynamicBatcher(run_batch, max_batch_size=8, observer=observer)
    await batcher.start()
    first = asyncio.create_task(batcher.submit(images(1, seed=1)))
    assert await asyncio.to_thread(entered.wait, EVENT_WAIT_S)
    same_batch = [images(2, seed=2), images(1, POISON_MARK), images(3, seed=3)]
    tasks = [asyncio.create_task(batcher.submit(pixels)) for pixels in same_batch]
    await until_queued(batcher, 6)
    gate.set()
    await first
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(outcome is failure for outcome in outcomes)
    later = images(4, seed=4)
    assert_own_rows(await batcher.submit(later), later)
    assert batcher.running
    await batcher.stop()


@pytest.mark.parametrize(
    ("bad_outputs", "message"),
    [
        (lambda batch: {"echo": batch[:-1]}, "batch invariant broken"),
        (lambda batch: {"echo": np.float32(1.0)}, "batch invariant broken"),
        (lambda batch: [batch], "expected a dict of arrays"),
        (lambda batch: {}, "expected a dict of arrays"),
    ],
)
async def test_broken_batch_invariant_fails_the_batch_and_the_loop_goes_on(
    bad_outputs: Any, message: str
) -> None:
    calls = 0

    def run_batch(batch: np.ndarray) -> Any:
        nonlocal calls
        calls += 1
        return bad_outputs(batch) if calls == 1 else echo_outputs(batch)

    failures: list[BaseException] = []
    batcher = DynamicBatcher(run_batch, on_failure=failures.append)
    await batcher.start()
    with pytest.raises(RuntimeError, match=message):
        await batcher.submit(images(3))
    later = images(2, seed=9)
    assert_own_rows(await batcher.submit(later), later)
    assert failures == []
    await batcher.stop()


async def test_crashed_loop_fails_pending_and_reports_failure(model: GatedModel) -> None:
    failures: list[BaseException] = []
    batcher = DynamicBatcher(model, max_batch_size=8, on_failure=failures.append)
    await batcher.start()
    gate_task = await block_runtime(batcher, model)
    pending = [asyncio.create_task(batcher.submit(images(2, seed=seed))) for seed in range(3)]
    await until_queued(batcher, 6)
    bug = RuntimeError("bug in the batch loop")

    def broken_collect() -> Any:
        raise bug

    batcher._collect_batch = broken_collect
    model.gate.set()
    await gate_task  # the batch in flight was settled before the loop broke
    for task in pending:
        with pytest.raises(NotReadyError, match="batch loop stopped"):
            await task
    assert failures == [bug]
    assert not batcher.running
    assert batcher.queue_depth == 0
    with pytest.raises(NotReadyError):
        await batcher.submit(images(1))
    await batcher.stop()  # still safe after the loop died


async def test_crash_while_settling_fails_the_unsettled_callers(model: GatedModel) -> None:
    failures: list[BaseException] = []
    batcher = DynamicBatcher(model, on_failure=failures.append)
    await batcher.start()
    gate_task = await block_runtime(batcher, model)
    tasks = [asyncio.create_task(batcher.submit(images(1, seed=seed))) for seed in range(2)]
    await until_queued(batcher, 2)

    settle = batcher._runner._settle
    settled_batches = 0

    def settle_then_break(*args: Any) -> None:
        nonlocal settled_batches
        settled_batches += 1
        if settled_batches > 1:
            raise RuntimeError("bug while settling")
        settle(*args)

    batcher._runner._settle = settle_then_break  # type: ignore[method-assign,assignment]
    model.gate.set()
    await gate_task
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(outcome, NotReadyError) for outcome in outcomes)
    assert len(failures) == 1
    await batcher.stop()


async def test_stop_fails_queued_requests_and_lets_the_batch_in_flight_finish(
    batcher: DynamicBatcher, model: GatedModel
) -> None:
    gate_task = await block_runtime(batcher, model)
    queued = [asyncio.create_task(batcher.submit(images(1, seed=seed))) for seed in range(2)]
    await until_queued(batcher, 2)
    stopping = asyncio.create_task(batcher.stop())
    await asyncio.sleep(0)
    assert not batcher.running
    with pytest.raises(NotReadyError):
        await batcher.submit(images(1))
    model.gate.set()
    await stopping
    assert_own_rows(await gate_task, images(1, GATE_MARK))
    for task in queued:
        with pytest.raises(NotReadyError, match="shutting down"):
            await task
    assert model.sizes == [1]
    await batcher.stop()  # idempotent


async def test_submit_before_start_is_not_ready() -> None:
    batcher = DynamicBatcher(echo_outputs)
    assert not batcher.running
    with pytest.raises(NotReadyError):
        await batcher.submit(images(1))


async def test_empty_request_is_invalid(batcher: DynamicBatcher) -> None:
    with pytest.raises(InvalidInputError):
        await batcher.submit(np.zeros((0, *IMAGE_SHAPE), dtype=np.uint8))


async def test_queue_delay_fills_a_batch_before_running_it() -> None:
    model = GatedModel()
    # A delay far longer than the test may take: only a full batch can wake the loop.
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=600.0)
    await batcher.start()
    sent = [images(1, seed=seed) for seed in range(4)]
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(pixels) for pixels in sent)), EVENT_WAIT_S
    )
    for result, pixels in zip(results, sent, strict=True):
        assert_own_rows(result, pixels)
    assert model.sizes == [4]
    await batcher.stop()


async def test_queue_delay_runs_a_partial_batch_when_it_expires() -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_queue_delay_s=0.01)
    await batcher.start()
    sent = images(3, seed=3)
    assert_own_rows(await asyncio.wait_for(batcher.submit(sent), EVENT_WAIT_S), sent)
    assert model.sizes == [3]
    await batcher.stop()


async def test_stop_wakes_a_loop_waiting_to_fill_a_batch() -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model, max_batch_size=64, max_queue_delay_s=600.0)
    await batcher.start()
    waiting = asyncio.create_task(batcher.submit(images(1)))
    await until_queued(batcher, 1)
    await asyncio.wait_for(batcher.stop(), EVENT_WAIT_S)
    with pytest.raises(NotReadyError):
        await waiting
    assert model.batches == []


async def test_observer_sees_batches_and_queue_depth(
    batcher: DynamicBatcher, model: GatedModel, observer: RecordingObserver, clock: FakeClock
) -> None:
    gate_task = await block_runtime(batcher, model)
    tasks = [asyncio.create_task(batcher.submit(images(3, seed=seed))) for seed in range(4)]
    await until_queued(batcher, 12)
    clock.advance(HOLD_S)  # while the first batch computes (blocked)
    model.gate.set()
    await asyncio.gather(gate_task, *tasks)
    # (size, one queue wait per slice, compute): the first batch started at once and
    # computed HOLD_S; the 8-image batch held 3 + 3 + 2 rows of three requests, the last
    # one 1 + 3; all four were queued before the clock moved and started after it.
    assert observer.batches == [
        (1, [0.0], HOLD_S),
        (8, [HOLD_S, HOLD_S, HOLD_S], 0.0),
        (4, [HOLD_S, HOLD_S], 0.0),
    ]
    # Reported after each batch left the queue: none left, 4 left, none left.
    assert observer.depths == [0, 4, 0]


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        DynamicBatcher(echo_outputs, max_batch_size=0)
    with pytest.raises(ValueError, match="max_queue_size"):
        DynamicBatcher(echo_outputs, max_queue_size=0)
    with pytest.raises(ValueError, match="max_queue_delay_s"):
        DynamicBatcher(echo_outputs, max_queue_delay_s=-1)


async def test_stop_abandons_a_batch_that_hangs(
    model: GatedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batcher_module, "STOP_IN_FLIGHT_TIMEOUT_S", 0.05)
    batcher = DynamicBatcher(model)
    await batcher.start()
    hung = await block_runtime(batcher, model)
    queued = asyncio.create_task(batcher.submit(images(1)))
    await until_queued(batcher, 1)
    await asyncio.wait_for(batcher.stop(), EVENT_WAIT_S)
    for task in (hung, queued):
        with pytest.raises(NotReadyError, match="shutting down"):
            await task
    model.gate.set()  # let the abandoned worker thread finish


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    max_batch_size=st.integers(min_value=1, max_value=9),
    request_sizes=st.lists(st.integers(min_value=1, max_value=20), min_size=1, max_size=12),
)
def test_any_mix_of_sizes_is_batched_within_limits_and_reassembled(
    max_batch_size: int, request_sizes: list[int]
) -> None:
    async def scenario() -> None:
        model = GatedModel(gated=True)
        batcher = DynamicBatcher(model, max_batch_size=max_batch_size)
        await batcher.start()
        gate_task = await block_runtime(batcher, model)
        sent = [images(size, seed=index) for index, size in enumerate(request_sizes)]
        tasks = [asyncio.create_task(batcher.submit(pixels)) for pixels in sent]
        await until_queued(batcher, sum(request_sizes))
        model.gate.set()
        for task, pixels in zip(tasks, sent, strict=True):
            assert_own_rows(await task, pixels)
        await gate_task
        await batcher.stop()
        sizes = model.sizes[1:]
        assert all(size <= max_batch_size for size in sizes)
        assert sum(sizes) == sum(request_sizes)
        # Greedy: every batch but the last is full, since everything was queued at once.
        assert all(size == max_batch_size for size in sizes[:-1])

    asyncio.run(scenario())


async def test_drain_returns_true_once_queued_work_has_finished(
    batcher: DynamicBatcher, model: GatedModel
) -> None:
    assert await batcher.drain(EVENT_WAIT_S)  # idle: at once
    gate_task = await block_runtime(batcher, model)
    sent = [images(2, seed=1), images(3, seed=2)]
    tasks = [asyncio.create_task(batcher.submit(pixels)) for pixels in sent]
    await until_queued(batcher, 5)
    drained = asyncio.create_task(batcher.drain(EVENT_WAIT_S))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not drained.done()  # a batch is held in the model and 5 images are queued
    model.gate.set()
    assert await drained
    # Everything accepted before the drain was answered by then.
    assert all(task.done() for task in tasks)
    assert gate_task.done()
    for task, pixels in zip(tasks, sent, strict=True):
        assert_own_rows(task.result(), pixels)
    assert batcher.queue_depth == 0
    assert batcher.running  # drain does not stop the batcher
    assert_own_rows(await batcher.submit(sent[0]), sent[0])


async def test_drain_returns_false_when_the_model_call_outlasts_the_timeout(
    batcher: DynamicBatcher, model: GatedModel
) -> None:
    gate_task = await block_runtime(batcher, model)
    queued = asyncio.create_task(batcher.submit(images(1, seed=3)))
    await until_queued(batcher, 1)
    assert await batcher.drain(0.05) is False
    assert not gate_task.done()
    assert not queued.done()
    model.gate.set()
    await gate_task
    await queued
    assert await batcher.drain(EVENT_WAIT_S)


async def test_drain_after_stop_returns_true_at_once(
    batcher: DynamicBatcher, model: GatedModel
) -> None:
    model.gate.set()
    await batcher.stop()
    assert await batcher.drain(0.0)


# --- the adaptive queue delay (latency_target_s) -----------------------------------------


async def test_adaptive_delay_grows_while_concurrent_callers_fill_batches(
    model: GatedModel, clock: FakeClock
) -> None:
    # The clock stands still, so no request spends any time against the target: only
    # batch contents drive the delay.
    target_s = 600.0
    batcher = DynamicBatcher(
        model, max_batch_size=8, max_queue_size=64, latency_target_s=target_s, clock=clock
    )
    await batcher.start()
    assert batcher.queue_delay_s == 0.0
    gate_task = await block_runtime(batcher, model)
    tasks = [asyncio.create_task(batcher.submit(images(1, seed=seed))) for seed in range(4)]
    await until_queued(batcher, 4)
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(gate_task, *tasks), EVENT_WAIT_S)
    # The four queued requests shared a batch: concurrent callers, so the delay grew by one
    # step (the first batch, a lone caller that did not wait, left it at 0).
    assert model.sizes == [1, 4]
    assert batcher.queue_delay_s == target_s / batcher_module.DELAY_STEPS
    await batcher.stop()


async def test_adaptive_delay_fills_a_batch_it_waits_for() -> None:
    model = GatedModel()
    batcher = DynamicBatcher(model, max_batch_size=4, latency_target_s=600.0)
    await batcher.start()
    batcher._delay.delay_s = 600.0  # as if grown: far longer than the test may take
    sent = [images(1, seed=seed) for seed in range(4)]
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(pixels) for pixels in sent)), EVENT_WAIT_S
    )
    for result, pixels in zip(results, sent, strict=True):
        assert_own_rows(result, pixels)
    assert model.sizes == [4]  # the wait ended when the batch was full, not at the delay
    await batcher.stop()


async def test_adaptive_delay_shrinks_to_zero_for_a_lone_caller() -> None:
    model = GatedModel()
    target_s = 0.2
    batcher = DynamicBatcher(model, max_batch_size=8, latency_target_s=target_s)
    await batcher.start()
    batcher._delay.delay_s = 4 * target_s / batcher_module.DELAY_STEPS  # four steps
    # One caller at a time: every wait brings nothing, so each halves the delay.
    for seed in range(4):
        sent = images(1, seed=seed)
        assert_own_rows(await asyncio.wait_for(batcher.submit(sent), EVENT_WAIT_S), sent)
    assert batcher.queue_delay_s == 0.0
    assert model.sizes == [1, 1, 1, 1]
    await batcher.stop()


async def test_adaptive_delay_halves_when_the_target_is_missed(
    model: GatedModel, clock: FakeClock
) -> None:
    target_s = HOLD_S / 2  # every request below spends HOLD_S in the batcher
    batcher = DynamicBatcher(model, max_batch_size=8, latency_target_s=target_s, clock=clock)
    await batcher.start()
    gate_task = await block_runtime(batcher, model)
    cap = target_s * batcher_module.DELAY_CAP_SHARE
    batcher._delay.delay_s = cap
    tasks = [asyncio.create_task(batcher.submit(images(1, seed=seed))) for seed in range(2)]
    await until_queued(batcher, 2)
    clock.advance(HOLD_S)  # past the delay too: the next batch starts without waiting
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(gate_task, *tasks), EVENT_WAIT_S)
    # Two batches, each over the target: halved twice (without the target, the second
    # batch, two concurrent callers, would have grown it back to the cap).
    assert model.sizes == [1, 2]
    assert batcher.queue_delay_s == cap / 4
    await batcher.stop()


async def test_queue_delay_is_measured_on_the_batchers_clock(clock: FakeClock) -> None:
    model = GatedModel(gated=True)
    delay_s = 600.0  # on the fake clock; were it real time, the test would time out
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_delay_s=delay_s, clock=clock)
    await batcher.start()
    full = asyncio.create_task(batcher.submit(images(4, GATE_MARK)))  # a full batch: no wait
    await model.wait_entered()
    partial = images(1, seed=6)
    partial_task = asyncio.create_task(batcher.submit(partial))
    await until_queued(batcher, 1)
    clock.advance(delay_s)  # the partial batch's delay is over (until <= now)
    model.gate.set()
    assert_own_rows(await asyncio.wait_for(partial_task, EVENT_WAIT_S), partial)
    await full
    assert model.sizes == [4, 1]
    await batcher.stop()


def test_invalid_latency_target_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_target_s"):
        DynamicBatcher(echo_outputs, latency_target_s=-0.001)
