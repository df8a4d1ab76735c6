"""Counting and tracing gRPC calls: one `RequestRecord` per RPC, counted exactly once with
its code, and (tracing on) its server span, ended with that same code.

`answered_call` is the whole of it for a handler: counted, and every exception answered
through `grpc_errors`, so the code counted is the code the caller gets. Both gRPC fronts
use the record (the grpc.aio servicers and the native front), so a call's span is named,
attributed and ended here, once, as OpenTelemetry's RPC conventions say: span
`<service>/<method>`, kind SERVER, `rpc.system`, `rpc.service`, `rpc.method` and
`rpc.grpc.status_code`, plus the model, version, request id and image count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

import grpc
from grpc import aio

from mnist_serving_server.core import tracing
from mnist_serving_server.grpc_api.grpc_errors import code_of, errors_answered
from mnist_serving_server.grpc_api.health import CLASSIFIER_SERVICE, V2_SERVICE
from mnist_serving_server.metrics import REASON_NOT_READY, ServerMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext

    from mnist_serving_server.core.inference import InferenceRequest

PROTOCOL: Final = "grpc"

# OpenTelemetry's RPC semantic conventions (the names as the issue and Jaeger/Tempo use).
RPC_SYSTEM: Final = "rpc.system"
RPC_SERVICE: Final = "rpc.service"
RPC_METHOD: Final = "rpc.method"
RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"
_CLASSIFIER_METHODS: Final = frozenset({"Classify", "ClassifyStream"})
# method -> (span name, the attributes every span of it starts with); built once per method.
_SPAN_IDENTITIES: dict[str, tuple[str, dict[str, str]]] = {}


def _span_identity(method: str) -> tuple[str, dict[str, str]]:
    identity = _SPAN_IDENTITIES.get(method)
    if identity is None:
        service = CLASSIFIER_SERVICE if method in _CLASSIFIER_METHODS else V2_SERVICE
        identity = (
            f"{service}/{method}",
            {RPC_SYSTEM: PROTOCOL, RPC_SERVICE: service, RPC_METHOD: method},
        )
        _SPAN_IDENTITIES[method] = identity
    return identity


class RequestRecord:
    """One RPC being handled, and its context manager; `code` None means "not decided yet".

    `finish(code)` counts the RPC at once. Error paths call it (via grpc_errors.abort_with)
    before `context.abort` sends the status, so the counters have moved by the time the
    caller sees its error; otherwise the RPC is counted when the `with` block exits. The
    servicer sets `model` and `version` once it has resolved them.

    Tracing on (core.tracing.tracer set), the record opens the call's server span, a child
    of the W3C context in `metadata` (the call's (key, value) pairs) when it carries one;
    `trace_request` / `trace_call` give the core its context, `finish` ends it. Off, the
    record touches no OpenTelemetry code and `metadata` is not read. `current`: the span is
    the current one between __enter__ and __exit__ (log lines carry its trace id); only
    for a `with` block that runs in the call's own task (grpc.aio's unary handlers).

    A plain class with __slots__ rather than a @contextmanager generator: it runs on every
    RPC, and this costs a third of the generator version (docs/performance.md).
    """

    __slots__ = (
        "_activation",
        "_current",
        "_metrics",
        "_started",
        "code",
        "counted",
        "images",
        "method",
        "model",
        "request_id",
        "span",
        "version",
    )

    def __init__(
        self,
        metrics: ServerMetrics,
        method: str,
        metadata: Iterable[tracing.Header] | None = None,
        *,
        current: bool = False,
    ) -> None:
        self._metrics = metrics
        self.method = method
        self.model = ""
        self.version = ""
        self.code: grpc.StatusCode | None = None
        self.counted = False
        self._started = 0.0
        self.request_id = ""
        self.images = 0
        """The request's id and image count, for the span (set by `trace_request`/`trace_call`)."""
        self.span: Span | None = None
        """The call's server span (None while tracing is off)."""
        self._current = current
        self._activation: tracing.current_span | None = None
        active = tracing.tracer
        if active is not None:
            name, attributes = _span_identity(method)
            self.span = tracing.start_server_span(active, name, metadata, attributes)

    @property
    def span_context(self) -> SpanContext | None:
        """The server span's context when the call is traced and sampled, else None."""
        span = self.span
        return None if span is None else tracing.sampled_context(span)

    def trace_call(self, request_id: str, images: int) -> SpanContext | None:
        """Note the call's request id and image count for its span, and return what the core
        is given (`InferenceRequest.trace`, DataPlane.infer's `trace`): the span's context
        when it is sampled, else None. Nothing happens while tracing is off."""
        span = self.span
        if span is None or not span.is_recording():
            return None
        self.request_id = request_id
        self.images = images
        return span.get_span_context()

    def trace_request(self, request: InferenceRequest) -> None:
        """`trace_call` for a core request: sets `request.trace` (None when not traced)."""
        if self.span is None:
            return
        shape = request.input.shape
        first = shape[0] if shape else 0
        request.trace = self.trace_call(request.id, first if isinstance(first, int) else 0)

    def __enter__(self) -> RequestRecord:
        self._started = time.perf_counter()
        self._metrics.inflight_requests.inc()
        if self._current and self.span is not None:
            self._activation = tracing.current_span(self.span)
            self._activation.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is not None and self.code is None:
            if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
                self.code = grpc.StatusCode.CANCELLED
            else:  # e.g. a stream item that did not parse; INTERNAL for anything unexpected
                self.code = code_of(exc)
        try:
            self.finish(self.code or grpc.StatusCode.OK, exc)
        finally:
            activation, self._activation = self._activation, None
            if activation is not None:
                activation.__exit__(None, None, None)

    def finish(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        """Count this RPC with `code` now (later calls, and the context exit, do nothing),
        and end its span; `error`, when known, is what failed it (its class is recorded)."""
        if self.counted:
            return
        self.code = code
        self.counted = True
        span = self.span
        if span is not None:
            self._end_span(span, code, error)
        metrics = self._metrics
        metrics.inflight_requests.dec()
        if code is grpc.StatusCode.UNAVAILABLE:  # warming up, shutting down, loop dead
            metrics.on_rejected(REASON_NOT_READY)
        metrics.count_request(
            PROTOCOL,
            self.method,
            self.model,
            self.version,
            code.name,
            time.perf_counter() - self._started,
        )

    def _end_span(self, span: Span, code: grpc.StatusCode, error: BaseException | None) -> None:
        if span.is_recording():
            attributes: dict[str, str | int] = {RPC_GRPC_STATUS_CODE: code.value[0]}
            if self.model:
                attributes[tracing.MODEL_NAME] = self.model
                attributes[tracing.MODEL_VERSION] = self.version
            if self.request_id:
                attributes[tracing.REQUEST_ID] = self.request_id
            if self.images:
                attributes[tracing.REQUEST_IMAGES] = self.images
            span.set_attributes(attributes)
            if code is not grpc.StatusCode.OK:
                # A cancelled handler's CancelledError says less than CANCELLED does.
                known = error is not None and not isinstance(error, asyncio.CancelledError)
                tracing.set_error(span, error if known and error is not None else code.name)
        span.end()


def call_metadata(context: aio.ServicerContext[Any, Any]) -> Iterable[tracing.Header] | None:
    """The call's metadata when tracing is on (for its span's parent), else None: unread."""
    if tracing.tracer is None:
        return None
    return context.invocation_metadata()


def track_request(
    metrics: ServerMetrics,
    method: str,
    context: aio.ServicerContext[Any, Any] | None = None,
    *,
    current: bool = True,
) -> RequestRecord:
    """Time one RPC, hold the in-flight gauge, and count it when it ends (a `with` block).

    The servicer sets `record.code` when it answers with an error; if it does not, a normal
    exit counts OK, a cancelled handler CANCELLED, a ServingError its status and any other
    exception INTERNAL. An UNAVAILABLE answer also counts a `not_ready` rejection.
    `context`: the call's, for its span's parent (tracing on); `current` False for a stream
    handler, an async generator that may be closed outside the call's task.
    """
    if context is None:
        return RequestRecord(metrics, method)
    return RequestRecord(metrics, method, call_metadata(context), current=current)


class AnsweredCall:
    """`async with answered_call(...) as record`: a RequestRecord, and any exception that
    leaves the block answered through grpc_errors (counted with that code first)."""

    __slots__ = ("_errors", "record")

    def __init__(
        self, metrics: ServerMetrics, method: str, context: aio.ServicerContext[Any, Any]
    ) -> None:
        self.record = RequestRecord(metrics, method, call_metadata(context), current=True)
        self._errors = errors_answered(context, self.record)

    async def __aenter__(self) -> RequestRecord:
        return self.record.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self._errors.__aexit__(exc_type, exc, traceback)
        finally:  # counted already when an error was answered; otherwise OK or CANCELLED
            self.record.__exit__(exc_type, exc, traceback)


def answered_call(
    metrics: ServerMetrics, method: str, context: aio.ServicerContext[Any, Any]
) -> AnsweredCall:
    """One RPC counted as `method`, its errors answered with their mapped status (never
    grpc.aio's UNKNOWN); see track_request for what is counted when."""
    return AnsweredCall(metrics, method, context)
