"""The batcher's spans: one `batch` span per traced batch, its calls' `queue` spans, and
the `onnxruntime.run` span around the model call (what each span is: core/tracing.py).

The batcher calls in here only while tracing is on (`tracing.tracer` is not None) and only
for a batch that serves at least one sampled call: nothing here runs on an untraced path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

import numpy as np
from opentelemetry.trace import Span, SpanContext, Tracer

from mnist_serving_server.core import tracing


class QueuedCall(Protocol):
    """What a batch span reads of one queued call (the batcher's request)."""

    @property
    def trace(self) -> SpanContext | None: ...  # the call's span when it is sampled

    @property
    def queued_ns(self) -> int: ...  # when it was queued, time.time_ns()


class BatchPart(Protocol):
    """What a batch span reads of one part of the batch (rows of one call)."""

    @property
    def request(self) -> QueuedCall: ...

    @property
    def start(self) -> int: ...  # the call's first row in this part (0: its first part)


def start(
    active: Tracer, parts: Iterable[BatchPart], rows: int, attributes: tracing.Attributes
) -> Span | None:
    """The batch's span, linked to each traced call it serves, and those calls' queue
    spans; None (no span at all) when no call of the batch is traced.

    `attributes`: the model version's (tracing.batch_attributes); the batch's size and
    number of parts are added here.
    """
    # One link per span: a stream's requests all belong to the stream's span.
    calls: dict[int, SpanContext] = {}
    queued: list[tuple[SpanContext, int]] = []
    requests = 0
    for part in parts:
        requests += 1
        call = part.request.trace
        if call is not None:
            calls[call.span_id] = call
            if part.start == 0:  # a split call was queued once, before its first part
                queued.append((call, part.request.queued_ns))
    if not calls:
        return None
    batch_attributes = {
        **attributes,
        tracing.BATCH_SIZE: rows,
        tracing.BATCH_REQUESTS: requests,
    }
    return tracing.start_batch_span(active, list(calls.values()), queued, batch_attributes)


def run(
    span: Span, run_batch: Callable[[np.ndarray], Mapping[str, np.ndarray]], batch: np.ndarray
) -> Mapping[str, np.ndarray]:
    """`run_batch(batch)` (in the worker thread) inside the `onnxruntime.run` child of `span`."""
    return tracing.run_in_span(span, lambda: run_batch(batch))


@contextlib.contextmanager
def failing(span: Span | None, error: BaseException) -> Iterator[None]:
    """`with`: the batch failed with `error`. Its span (if traced) is marked failed and is
    the current span inside the block (a log line there carries the batch's trace), then
    ends."""
    if span is None:
        yield
        return
    tracing.set_error(span, error)
    try:
        with tracing.current_span(span):
            yield
    finally:
        span.end()
