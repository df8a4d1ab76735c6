"""Greedy dynamic batching in front of a blocking model call. Never imports grpc.

One asyncio task (the batch loop, `DynamicBatcher`) owns the queue (`_Queue`). Callers
`submit` an array of images and await a future that was created before the request was
queued. Whenever the worker thread is free, the loop takes everything queued, up to
`max_batch_size` images
(optionally waiting up to `max_queue_delay_s` for a batch to fill), drops requests whose
deadline passed or whose caller went away, concatenates the rest once, runs the model in
a dedicated thread and slices each caller's rows back out (`_BatchRunner`).

With a latency target (`latency_target_s` > 0) the queue delay is not fixed but adaptive
(core/delay_policy.py, one call per batch).

Cost per request matters more than anything here (the model costs ~12 µs per image), so
`submit` does no more than a few attribute reads, one append and one future; the loop
wakes once per batch, not once per request.

Every time the batcher reads (arrival, deadlines, queue delay, queue waits, compute) comes
from one clock, `time.monotonic` unless the constructor is given another: tests pass a
fake one to move time across a deadline or a queue wait without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import numpy as np

from mnist_serving_server.core import batch_spans, tracing
from mnist_serving_server.core.delay_policy import DELAY_CAP_SHARE as DELAY_CAP_SHARE
from mnist_serving_server.core.delay_policy import DELAY_STEPS as DELAY_STEPS
from mnist_serving_server.core.delay_policy import QueueDelay
from mnist_serving_server.core.drain import SHUTTING_DOWN
from mnist_serving_server.core.errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotReadyError,
    QueueFullError,
)

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_QUEUE_DELAY_S = 0.0
DEFAULT_MAX_QUEUE_SIZE = 4096
# stop() lets the batch being computed finish and settle its callers; a model call that
# hangs longer than this is abandoned (its callers get NotReadyError).
STOP_IN_FLIGHT_TIMEOUT_S = 10.0
WORKER_THREAD_NAME = "mnist-batch-worker"

REASON_QUEUE_FULL = "queue_full"
REASON_DEADLINE = "deadline"
REASON_CANCELLED = "cancelled"

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[np.ndarray], Mapping[str, np.ndarray]]
Clock = Callable[[], float]


class BatcherObserver(Protocol):
    """What the batcher reports (implemented by the metrics module)."""

    def on_queue_depth(self, images: int) -> None: ...

    def on_batch(
        self, batch_size: int, queue_waits_s: Sequence[float], compute_s: float
    ) -> None: ...

    def on_rejected(self, reason: str) -> None: ...  # "queue_full" | "deadline" | "cancelled"


class _Request:
    """One caller's images, its future, and how many of its rows are already batched."""

    __slots__ = (
        "deadline",
        "enqueued_at",
        "future",
        "parts",
        "pixels",
        "queued_ns",
        "rows",
        "taken",
        "trace",
    )

    def __init__(
        self,
        pixels: np.ndarray,
        rows: int,
        future: asyncio.Future[Outputs],
        deadline: float | None,
        enqueued_at: float,
        trace: SpanContext | None,
    ) -> None:
        self.pixels = pixels
        self.rows = rows
        self.future = future
        self.deadline = deadline
        self.enqueued_at = enqueued_at
        self.taken = 0  # rows already handed to a batch (> 0 only for a split request)
        self.parts: list[Mapping[str, np.ndarray]] = []  # outputs of earlier chunks, in order
        # The caller's span when it is traced (core/tracing.py), and when it was queued on
        # the spans' clock (wall time, ns); read only when a batch is traced.
        self.trace = trace
        self.queued_ns = 0 if trace is None else time.time_ns()


class _Slice:
    """Rows [start, stop) of one request, at `offset` in the batch."""

    __slots__ = ("offset", "request", "start", "stop")

    def __init__(self, request: _Request, start: int, stop: int, offset: int) -> None:
        self.request = request
        self.start = start
        self.stop = stop
        self.offset = offset


class _Queue:
    """The requests waiting for a batch, oldest first, and how many images they hold.

    `DynamicBatcher.enqueue` appends to `requests` and adds to `images` itself (the
    per-request path: no call more); checking room, taking a batch and failing what waits
    are here, with the observer's reports about them.
    """

    __slots__ = ("_clock", "_max_batch_size", "_max_size", "_observer", "images", "requests")

    def __init__(
        self, max_size: int, max_batch_size: int, clock: Clock, observer: BatcherObserver | None
    ) -> None:
        self.requests: deque[_Request] = deque()
        self.images = 0  # images waiting (not yet handed to the model)
        self._max_size = max_size
        self._max_batch_size = max_batch_size
        self._clock = clock
        self._observer = observer

    def check_room(self, rows: int) -> None:
        """Raise QueueFullError (counted as a rejection) now if `rows` more images do not
        fit: what `enqueue` checks, for a caller that refuses before it decodes the input
        (under overload, a refusal must cost less than an acceptance)."""
        if rows > self._max_size:
            # Permanent, not load: retrying can never succeed, so not RESOURCE_EXHAUSTED.
            raise InvalidInputError(
                f"request of {rows} images is larger than the queue limit "
                f"{self._max_size} (max_queue_size); send smaller requests"
            )
        queued = self.images
        if queued + rows > self._max_size:
            self.reject(REASON_QUEUE_FULL)
            raise QueueFullError(
                f"queue full: {queued} images queued, limit {self._max_size}; retry with backoff"
            )

    def collect(self) -> tuple[list[_Slice], int]:
        """Take up to max_batch_size rows from the front of the queue, splitting if needed."""
        queue = self.requests
        capacity = self._max_batch_size
        now = self._clock()
        slices: list[_Slice] = []
        rows = 0
        taken_images = 0
        while queue and rows < capacity:
            request = queue[0]
            remaining = request.rows - request.taken
            future = request.future
            if future.done():
                # Cancelled by its caller, or failed with an earlier chunk of itself.
                queue.popleft()
                taken_images += remaining
                if future.cancelled():
                    self.reject(REASON_CANCELLED)
                    if request.trace is not None and request.taken == 0:
                        tracing.end_queue_span(request.trace, request.queued_ns, REASON_CANCELLED)
                continue
            if request.deadline is not None and request.deadline <= now:
                queue.popleft()
                taken_images += remaining
                self.reject(REASON_DEADLINE)
                error = DeadlineExceededError("deadline exceeded while waiting in the queue")
                if request.trace is not None and request.taken == 0:
                    tracing.end_queue_span(request.trace, request.queued_ns, error)
                future.set_exception(error)
                continue
            count = min(remaining, capacity - rows)
            start = request.taken
            slices.append(_Slice(request, start, start + count, rows))
            rows += count
            taken_images += count
            if count == remaining:
                queue.popleft()
            else:
                request.taken = start + count
        self.images -= taken_images
        self.report_depth()
        return slices, rows

    def fail_all(self, exc: BaseException) -> None:
        """Fail everything queued with `exc`."""
        while self.requests:
            future = self.requests.popleft().future
            if not future.done():
                future.set_exception(exc)
        self.images = 0
        self.report_depth()

    def reject(self, reason: str) -> None:
        if self._observer is not None:
            try:
                self._observer.on_rejected(reason)
            except Exception:
                logger.exception("batch observer failed")

    def report_depth(self) -> None:
        if self._observer is not None:
            try:
                self._observer.on_queue_depth(self.images)
            except Exception:
                logger.exception("batch observer failed")


class _BatchRunner:
    """Runs one batch at a time in the worker thread and answers each of its callers."""

    def __init__(
        self,
        run_batch: RunBatch,
        clock: Clock,
        observer: BatcherObserver | None,
        trace_attributes: tracing.Attributes | None,
        on_outputs: Callable[[np.ndarray, Mapping[str, np.ndarray]], None] | None,
    ) -> None:
        self._run_batch = run_batch
        self._clock = clock
        self._observer = observer
        self._trace_attributes = dict(trace_attributes or {})
        # Each batch's inputs and outputs once its callers are answered (core/shadow.py).
        self._on_outputs = on_outputs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        # The batch being computed, so that a dying loop can fail its callers too.
        self.in_flight: list[_Slice] = []

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=WORKER_THREAD_NAME)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def fail_in_flight(self, exc: BaseException) -> None:
        """Fail the callers of the batch being computed that are not answered yet."""
        _fail_slices(self.in_flight, exc)
        self.in_flight = []

    async def run(self, slices: list[_Slice], rows: int) -> None:
        """Compute the batch `slices` (`rows` images) and answer its callers; a model failure
        fails this batch's callers only."""
        assert self._loop is not None
        self.in_flight = slices
        active = tracing.tracer
        span = (
            None
            if active is None
            else batch_spans.start(active, slices, rows, self._trace_attributes)
        )
        try:
            batch = _concatenate(slices, rows)
            started = self._clock()
            # Always in the worker thread, even for one image where running it right here
            # would be cheaper (measured +15% requests/s): a stalled model call must never
            # freeze the event loop, and with it health checks and the SIGTERM drain.
            outputs, compute_s = await self._loop.run_in_executor(
                self._executor, self._timed_run, batch, span
            )
            _check_outputs(outputs, rows)
        except asyncio.CancelledError as exc:  # stop() gave up on the model call
            with batch_spans.failing(span, exc):
                raise
        except Exception as exc:
            # The log line carries the batch's trace.
            with batch_spans.failing(span, exc):
                logger.error("batch of %d images failed", rows, exc_info=exc)
            self.fail_in_flight(exc)
            return
        # Still "in flight" while settling: if settling itself breaks, the dying loop
        # fails whichever of these callers are not settled yet.
        try:
            self._settle(slices, outputs)
        finally:
            if span is not None:
                span.end()
        self.in_flight = []
        if self._on_outputs is not None:
            try:
                self._on_outputs(batch, outputs)
            except Exception:
                logger.exception("batch outputs hook failed")
        if self._observer is not None:
            waits = [started - piece.request.enqueued_at for piece in slices]
            try:
                self._observer.on_batch(rows, waits, compute_s)
            except Exception:
                logger.exception("batch observer failed")

    def _timed_run(
        self, batch: np.ndarray, span: Span | None
    ) -> tuple[Mapping[str, np.ndarray], float]:
        """Runs in the worker thread. Compute is timed on the batcher's clock, like the queue
        waits (the default, time.monotonic, reads the clock perf_counter reads on Linux).
        With the batch's `span` (tracing on), the model call is its child span."""
        clock = self._clock
        started = clock()
        if span is None:
            outputs = self._run_batch(batch)
        else:
            outputs = batch_spans.run(span, self._run_batch, batch)
        return outputs, clock() - started

    def _settle(self, slices: list[_Slice], outputs: Mapping[str, np.ndarray]) -> None:
        """Hand each caller its rows (views into the batch outputs, no copies)."""
        for piece in slices:
            request = piece.request
            future = request.future
            if future.done():
                continue  # cancelled while computing
            offset = piece.offset
            end = offset + piece.stop - piece.start
            own = {name: value[offset:end] for name, value in outputs.items()}
            if piece.start == 0 and piece.stop == request.rows:
                future.set_result(own)
                continue
            request.parts.append(own)
            if piece.stop == request.rows:
                future.set_result(
                    {name: np.concatenate([part[name] for part in request.parts]) for name in own}
                )
                request.parts = []


class DynamicBatcher:
    """Queue + futures + greedy batching around one blocking `run_batch` callable."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_queue_delay_s: float = DEFAULT_MAX_QUEUE_DELAY_S,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
        latency_target_s: float = 0.0,
        observer: BatcherObserver | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        clock: Clock = time.monotonic,
        trace_attributes: tracing.Attributes | None = None,
        on_outputs: Callable[[np.ndarray, Mapping[str, np.ndarray]], None] | None = None,
    ) -> None:
        """`clock`: seconds, never going backwards (read from the event loop and the worker
        thread); deadlines given to `submit` are its values. `trace_attributes`: what each
        batch span carries besides the batch's own numbers (tracing.batch_attributes).
        `on_outputs`: given each batch's inputs and outputs once its callers are answered.
        """
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {max_queue_size}")
        # Bound once here: a call costs about what time.monotonic() did (measured ~10 ns more).
        self._clock = clock
        self._max_batch_size = max_batch_size
        self._delay = QueueDelay(max_queue_delay_s, latency_target_s)
        self._queue = _Queue(max_queue_size, max_batch_size, clock, observer)
        # The queue's own methods, bound once (no call more per request or per batch).
        self.check_room: Callable[[int], None] = self._queue.check_room
        self._collect_batch: Callable[[], tuple[list[_Slice], int]] = self._queue.collect
        self._runner = _BatchRunner(run_batch, clock, observer, trace_attributes, on_outputs)
        self._on_failure = on_failure
        self._running = False
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # The loop parks on this future; `enqueue` resolves it once at least
        # `_wake_at_images` images are queued (1 when idle, a full batch while filling).
        self._waiter: asyncio.Future[None] | None = None
        self._wake_at_images = 1
        # drain() callers, settled when the loop next finds nothing queued or computing.
        self._drain_waiters: list[asyncio.Future[None]] = []

    @property
    def queue_depth(self) -> int:
        """Images waiting (not yet handed to the model)."""
        return self._queue.images

    @property
    def running(self) -> bool:
        """True between start() and stop(), and False once the loop has died."""
        return self._running

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    @property
    def queue_delay_s(self) -> float:
        """How long the batcher now waits for a batch to fill (adaptive when a target is set)."""
        return self._delay.delay_s

    async def start(self) -> None:
        """Start the batch loop on the running event loop (idempotent)."""
        if self._running:
            return
        if self._stopping:
            raise RuntimeError("a stopped DynamicBatcher cannot be restarted")
        self._loop = asyncio.get_running_loop()
        self._runner.start(self._loop)
        self._running = True
        self._task = self._loop.create_task(self._batch_loop(), name="mnist-batch-loop")

    async def stop(self) -> None:
        """Stop: the batch being computed finishes; queued requests fail with NotReadyError.
        Idempotent; safe after the loop has died."""
        self._running = False
        if self._stopping:
            return
        self._stopping = True
        self._wake()
        task = self._task
        if task is not None and not task.done():
            # Give the batch in flight a chance to settle its callers, then insist.
            done, _ = await asyncio.wait({task}, timeout=STOP_IN_FLIGHT_TIMEOUT_S)
            if not done:
                logger.warning(
                    "batch in flight did not finish within %.1f s of stop; abandoning it",
                    STOP_IN_FLIGHT_TIMEOUT_S,
                )
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._fail_pending(NotReadyError(SHUTTING_DOWN))
        self._notify_drained()
        self._runner.shutdown()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or being computed; False if `timeout_s` passed first.
        For retiring a batcher that no new request can reach any more (the registry has
        swapped it out): what was accepted still finishes."""
        if not self._running or (not self._queue.requests and not self._runner.in_flight):
            return True
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except TimeoutError:
            return False
        return True

    def _notify_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def submit(
        self, pixels: np.ndarray, *, deadline: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue `pixels` ([n, ...], n >= 1) and return every output, sliced to these n rows.

        `deadline`: a value of the batcher's clock. Raises QueueFullError at once when the
        request does not fit, DeadlineExceededError if the deadline passes before compute,
        NotReadyError when stopped; a model failure is raised as is."""
        return await self.enqueue(pixels, deadline=deadline)

    def enqueue(
        self,
        pixels: np.ndarray,
        *,
        deadline: float | None = None,
        trace: SpanContext | None = None,
    ) -> asyncio.Future[Outputs]:
        """`submit` without a coroutine: queue now, return the future of the outputs.

        Raises what `submit` raises before queueing, at once; the future then carries the
        outputs, DeadlineExceededError, NotReadyError or the model's failure. `trace`: the
        caller's span (sampled calls, tracing on): the batch that serves it then makes its
        queue span and links to it (core/batch_spans.py)."""
        if not self._running:
            raise NotReadyError("the batcher is not running (not started, stopping or failed)")
        rows = len(pixels) if pixels.ndim else 0
        if rows < 1:
            raise InvalidInputError(f"expected at least one image, got shape {pixels.shape}")
        queue = self._queue
        now = self._clock()
        if deadline is not None and deadline <= now:
            queue.reject(REASON_DEADLINE)
            raise DeadlineExceededError("deadline exceeded before the request was queued")
        queue.check_room(rows)
        assert self._loop is not None  # set by start()
        future: asyncio.Future[Outputs] = self._loop.create_future()
        queue.requests.append(_Request(pixels, rows, future, deadline, now, trace))
        queued = queue.images + rows
        queue.images = queued
        if self._waiter is not None and queued >= self._wake_at_images:
            self._wake()
        return future

    # --- the batch loop -------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_for_images(self, images: int, until: float | None) -> None:
        """Park until `images` are queued, stop() is called, or the clock reads >= until."""
        assert self._loop is not None
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiter = waiter
        self._wake_at_images = images
        try:
            if until is None:
                await waiter
            else:
                # `until` is on the batcher's clock, the timer on the loop's: convert.
                loop_deadline = self._loop.time() + (until - self._clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(loop_deadline):
                        await waiter
        finally:
            self._waiter = None
            self._wake_at_images = 1

    async def _batch_loop(self) -> None:
        queue = self._queue
        delay = self._delay
        waited_from = -1  # images queued when the current wait for a fuller batch began
        try:
            while not self._stopping:
                if not queue.requests:
                    if self._drain_waiters:
                        self._notify_drained()
                    await self._wait_for_images(1, None)
                    continue
                delay_s = delay.delay_s
                if delay_s > 0 and queue.images < self._max_batch_size:
                    # Wait for a full batch, at most `delay_s` after the oldest arrived.
                    until = queue.requests[0].enqueued_at + delay_s
                    if until > self._clock():
                        if waited_from < 0:
                            waited_from = queue.images
                        await self._wait_for_images(self._max_batch_size, until)
                        continue  # re-check: stopped, batch full, or the delay is over
                brought_from, waited_from = waited_from, -1
                slices, rows = self._collect_batch()
                if slices:
                    await self._runner.run(slices, rows)
                    if delay.adaptive:
                        oldest = min(piece.request.enqueued_at for piece in slices)
                        delay.adapt(self._clock() - oldest, rows, len(slices), brought_from)
        except asyncio.CancelledError:
            # Only stop() cancels the loop (after its grace); it fails what is pending.
            self._runner.fail_in_flight(NotReadyError(SHUTTING_DOWN))
            raise
        except BaseException as exc:
            self._loop_died(exc)
            if not isinstance(exc, Exception):
                raise

    def _loop_died(self, exc: BaseException) -> None:
        self._running = False
        logger.error("batch loop stopped unexpectedly", exc_info=exc)
        self._fail_pending(
            NotReadyError("batch loop stopped unexpectedly; the server is not serving")
        )
        self._notify_drained()
        if self._on_failure is not None:
            try:
                self._on_failure(exc)
            except Exception:
                logger.exception("on_failure callback raised")

    def _fail_pending(self, exc: BaseException) -> None:
        """Fail the batch in flight and everything queued with `exc`."""
        self._runner.fail_in_flight(exc)
        self._queue.fail_all(exc)


def _concatenate(slices: list[_Slice], rows: int) -> np.ndarray:
    """The batch's input: the slices' rows in order (no copy for one whole request)."""
    if len(slices) == 1:
        only = slices[0]
        if only.start == 0 and only.stop == only.request.rows:
            return only.request.pixels  # the common low-load case: no copy at all
        return only.request.pixels[only.start : only.stop]
    first = slices[0].request.pixels
    batch = np.empty((rows, *first.shape[1:]), dtype=first.dtype)
    for piece in slices:
        batch[piece.offset : piece.offset + piece.stop - piece.start] = piece.request.pixels[
            piece.start : piece.stop
        ]
    return batch


def _fail_slices(slices: list[_Slice], exc: BaseException) -> None:
    for piece in slices:
        if not piece.request.future.done():
            piece.request.future.set_exception(exc)


def _check_outputs(outputs: object, rows: int) -> None:
    """The batch invariant: every output is an array with one row per input image."""
    if not isinstance(outputs, Mapping) or not outputs:
        raise RuntimeError(f"model returned {type(outputs).__name__}, expected a dict of arrays")
    for name, value in outputs.items():
        if not isinstance(value, np.ndarray) or value.ndim == 0 or value.shape[0] != rows:
            shape = getattr(value, "shape", type(value).__name__)
            raise RuntimeError(
                f"batch invariant broken: output {name!r} has shape {shape} for {rows} input rows"
            )
