"""The core's traces: the caller's W3C context, and the queue, decode, batch and model spans.

Tracing is off unless the process set it up: `telemetry.py` installs its SDK tracer here
(`install`). Until then `tracer` is None, and that one `is None` test is all any hot path
pays: no OpenTelemetry call, no attribute built, nothing allocated per request.

When it is on, a front opens the call's server span (named and attributed by the
transport) and gives the core the span's context in `InferenceRequest.trace` (None for a
call that is not sampled: then the core makes no span for it either). From that context
the core makes, in this module:

- `decode`: the PNG/JPEG decode of an encoded input, when there is one;
- `queue`: from the moment the call is queued until the batch that takes it starts
  (made when the batch starts, with its real start time: nothing is kept open meanwhile);
- `batch`: one per ONNX Runtime batch, a root span with a *link* to every sampled call it
  serves (a batch has many parents), and the model, version, provider and batch size;
- `onnxruntime.run`: the model call itself, a child of `batch`.

A failure sets the span's status to ERROR and `error.type` to the error's kind (its class
name or status code), never its message: messages can quote the request's data.
Imports only opentelemetry-api (never the SDK, a transport or prometheus_client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from mnist_serving_server.core.runtime import ModelInfo

T = TypeVar("T")

tracer: Tracer | None = None
"""The process's tracer, None while tracing is off (set by `install`, i.e. telemetry.py)."""

# Span names: few and fixed (what a span is, never which model: that is an attribute).
DECODE_SPAN: Final = "decode"
QUEUE_SPAN: Final = "queue"
BATCH_SPAN: Final = "batch"
RUNTIME_SPAN: Final = "onnxruntime.run"

# Attributes. `error.type` is OpenTelemetry's own; the rest are this server's.
ERROR_TYPE: Final = "error.type"
MODEL_NAME: Final = "mnist_serving.model.name"
MODEL_VERSION: Final = "mnist_serving.model.version"
REQUEST_ID: Final = "mnist_serving.request.id"
REQUEST_IMAGES: Final = "mnist_serving.request.images"
BATCH_SIZE: Final = "mnist_serving.batch.size"
"""Images in the batch."""
BATCH_REQUESTS: Final = "mnist_serving.batch.requests"
"""Calls (or parts of calls) the batch serves, sampled or not."""
PROVIDER: Final = "mnist_serving.provider"

# The W3C headers (gRPC metadata keys and HTTP header names are lower case on the wire).
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
_W3C_HEADERS: Final = frozenset({TRACEPARENT, TRACESTATE})
_PROPAGATOR: Final = TraceContextTextMapPropagator()

Attributes = Mapping[str, AttributeValue]
Header = tuple[str | bytes, str | bytes]
"""One gRPC metadata entry or HTTP header: (key, value), as text or as bytes."""


def install(new: Tracer | None) -> None:
    """Make `new` the process's tracer (None: tracing off from now on)."""
    global tracer  # the one switch every hot path reads
    tracer = new


# --- the caller's context -------------------------------------------------------------


def caller_context(headers: Iterable[Header] | None) -> Context | None:
    """The W3C trace context (`traceparent`, `tracestate`) the caller sent, or None when it
    sent none (or one that does not parse): the server span then starts a trace."""
    if headers is None:
        return None
    carrier: dict[str, str] = {}
    for key, value in headers:
        name = key.decode("latin-1") if isinstance(key, bytes) else key
        if name in _W3C_HEADERS:
            carrier[name] = value.decode("latin-1") if isinstance(value, bytes) else value
    if TRACEPARENT not in carrier:
        return None
    extracted = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def traceparent(span_context: SpanContext) -> str:
    """The W3C `traceparent` value naming this span (for a response header)."""
    return (
        f"00-{trace.format_trace_id(span_context.trace_id)}-"
        f"{trace.format_span_id(span_context.span_id)}-{span_context.trace_flags:02x}"
    )


def start_server_span(
    active: Tracer, name: str, headers: Iterable[Header] | None, attributes: Attributes
) -> Span:
    """A call's server span, the child of the caller's span when it sent a context."""
    return active.start_span(
        name,
        context=caller_context(headers),
        kind=SpanKind.SERVER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def sampled_context(span: Span) -> SpanContext | None:
    """What the core is given for a call (`InferenceRequest.trace`): the span's context
    when it records, None when it was not sampled (the core then makes no span for it)."""
    return span.get_span_context() if span.is_recording() else None


# --- errors and the current span ---------------------------------------------------------


def error_kind(error: BaseException | str) -> str:
    """What `error.type` records: a status name as given, or the exception's class name."""
    return error if isinstance(error, str) else type(error).__name__


def set_error(span: Span, error: BaseException | str) -> None:
    """Mark `span` failed with the error's kind (never its message, which may quote data)."""
    kind = error_kind(error)
    span.set_attribute(ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, kind))


class current_span:  # noqa: N801 - used like a function: `with current_span(span):`
    """`with`: `span` is the current span inside the block (log lines carry its trace id)."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: object = None

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(self, *exc_info: object) -> None:
        otel_context.detach(self._token)  # type: ignore[arg-type]


def _parent(span_context: SpanContext) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(span_context))


# --- the core's spans ------------------------------------------------------------------


def in_span(name: str, parent: SpanContext, work: Callable[[], T]) -> T:
    """`work()` inside a child span of `parent` (failed with its error's kind if it raises).
    Tracing may have been switched off since `parent` was made: then just `work()`."""
    return _within(name, _parent(parent), work)


def _within(name: str, parent: Context, work: Callable[[], T]) -> T:
    active = tracer
    if active is None:
        return work()
    span = active.start_span(
        name, context=parent, record_exception=False, set_status_on_exception=False
    )
    try:
        return work()
    except BaseException as exc:
        set_error(span, exc)
        raise
    finally:
        span.end()


def batch_attributes(info: ModelInfo) -> dict[str, AttributeValue]:
    """The attributes every batch span of this model version carries."""
    return {MODEL_NAME: info.name, MODEL_VERSION: info.version, PROVIDER: info.provider}


def start_batch_span(
    active: Tracer,
    calls: Sequence[SpanContext],
    queued: Sequence[tuple[SpanContext, int]],
    attributes: Attributes,
) -> Span:
    """The batch's span, linked to each sampled call it serves (`calls`), and the queue span
    of each call whose first rows it takes (`queued`: its context and when, in
    time.time_ns(), it was queued), ended now: the batch starts."""
    started = time.time_ns()
    span = active.start_span(
        BATCH_SPAN,
        attributes=attributes,
        links=[Link(call) for call in calls],
        start_time=started,
        record_exception=False,
        set_status_on_exception=False,
    )
    to_batch = (Link(span.get_span_context()),)
    for call, queued_at in queued:
        active.start_span(
            QUEUE_SPAN, context=_parent(call), links=to_batch, start_time=queued_at
        ).end(end_time=started)
    return span


def end_queue_span(call: SpanContext, queued_at: int, error: BaseException | str) -> None:
    """The queue span of a call that left the queue without running (its deadline passed,
    it was cancelled), ended now with that reason."""
    active = tracer
    if active is None:
        return
    span = active.start_span(QUEUE_SPAN, context=_parent(call), start_time=queued_at)
    set_error(span, error)
    span.end()


def run_in_span(batch_span: Span, work: Callable[[], T]) -> T:
    """`work()` (the model call, in the worker thread) inside an `onnxruntime.run` child
    of `batch_span`."""
    return _within(RUNTIME_SPAN, trace.set_span_in_context(batch_span), work)
