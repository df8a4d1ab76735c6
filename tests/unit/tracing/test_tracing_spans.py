"""The spans the server makes, against an in-memory exporter: the caller's context, a gRPC
call's server span (RequestRecord, both fronts'), the HTTP route names, and the batcher's
queue, batch and model spans with the batch's links to its calls."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, get_current_span
from prometheus_client import CollectorRegistry

from mnist_serving_server.core import tracing
from mnist_serving_server.core.batcher import DynamicBatcher
from mnist_serving_server.core.errors import DeadlineExceededError, ModelNotFoundError
from mnist_serving_server.core.inference import InferenceRequest, InputTensor
from mnist_serving_server.grpc_api.call_metrics import RequestRecord
from mnist_serving_server.http_api import routes
from mnist_serving_server.metrics import ServerMetrics

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"
IMAGE_SHAPE = (1, 28, 28)


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def hex_trace(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"{span.context.trace_id:032x}"


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def request_with(images: int, request_id: str = "r-1") -> InferenceRequest:
    tensor = InputTensor("pixels", "UINT8", (images, 28, 28), raw=bytes(images * 784))
    return InferenceRequest("mnist", "", tensor, request_id=request_id)


# --- the caller's context -------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [("user-agent", "grpc-python"), ("traceparent", TRACEPARENT)],
        [(b"traceparent", TRACEPARENT.encode()), (b"tracestate", b"vendor=1")],
    ],
)
def test_the_callers_traceparent_is_read_from_text_or_byte_pairs(
    headers: list[tracing.Header],
) -> None:
    context = tracing.caller_context(headers)
    assert context is not None
    span_context = get_current_span(context).get_span_context()
    assert f"{span_context.trace_id:032x}" == TRACE_ID
    assert f"{span_context.span_id:016x}" == CALLER_SPAN_ID
    assert span_context.is_remote


@pytest.mark.parametrize(
    "headers", [None, [], [("tracestate", "a=1")], [("traceparent", "00-not-a-context-01")]]
)
def test_no_or_a_malformed_traceparent_starts_a_new_trace(
    headers: list[tracing.Header] | None,
) -> None:
    assert tracing.caller_context(headers) is None


# --- a gRPC call's server span --------------------------------------------------------------


def test_tracing_off_makes_no_span_and_reads_no_metadata() -> None:
    class Unreadable:
        def __iter__(self) -> None:
            raise AssertionError("metadata read with tracing off")

    record = RequestRecord(ServerMetrics(CollectorRegistry()), "ModelInfer", Unreadable())  # type: ignore[arg-type]
    request = request_with(1)
    with record:
        record.trace_request(request)
    assert record.span is None
    assert request.trace is None


def test_a_grpc_call_has_a_server_span_under_its_caller(exported: InMemorySpanExporter) -> None:
    metrics = ServerMetrics(CollectorRegistry())
    record = RequestRecord(metrics, "ModelInfer", [("traceparent", TRACEPARENT)], current=True)
    request = request_with(3)
    with record:
        assert get_current_span() is record.span  # current inside the block
        record.trace_request(request)
        record.model, record.version = "mnist", "1"
    assert get_current_span() is not record.span
    (span,) = exported.get_finished_spans()
    assert span.name == "inference.GRPCInferenceService/ModelInfer"
    assert span.kind is SpanKind.SERVER
    assert hex_trace(span) == TRACE_ID
    assert parent_id(span) == int(CALLER_SPAN_ID, 16)
    assert request.trace == span.context
    assert dict(span.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "inference.GRPCInferenceService",
        "rpc.method": "ModelInfer",
        "rpc.grpc.status_code": 0,
        "mnist_serving.model.name": "mnist",
        "mnist_serving.model.version": "1",
        "mnist_serving.request.id": "r-1",
        "mnist_serving.request.images": 3,
    }
    assert span.status.status_code is StatusCode.UNSET


def test_a_failed_call_records_the_error_kind_not_its_message(
    exported: InMemorySpanExporter,
) -> None:
    record = RequestRecord(ServerMetrics(CollectorRegistry()), "Classify").__enter__()
    record.finish(grpc.StatusCode.NOT_FOUND, ModelNotFoundError("no model 'secret-data'"))
    record.finish(grpc.StatusCode.OK)  # counted and ended once: later calls do nothing
    (span,) = exported.get_finished_spans()
    assert span.name == "mnist_serving.v1.Classifier/Classify"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ModelNotFoundError"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "ModelNotFoundError"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert not span.events  # no exception event: its message could quote the request
    assert "secret-data" not in repr(dict(span.attributes))


def test_a_cancelled_call_is_recorded_by_its_code(exported: InMemorySpanExporter) -> None:
    record = RequestRecord(ServerMetrics(CollectorRegistry()), "ModelInfer")
    with pytest.raises(asyncio.CancelledError), record:
        raise asyncio.CancelledError
    (span,) = exported.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["error.type"] == "CANCELLED"


# --- HTTP route names -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "path", "route"),
    [
        ("ModelInfer", "/v2/models/mnist/infer", "/v2/models/{model_name}/infer"),
        (
            "ModelInfer",
            "/v2/models/mnist/versions/2/infer",
            "/v2/models/{model_name}/versions/{model_version}/infer",
        ),
        ("ModelMetadata", "/v2/models/mnist", "/v2/models/{model_name}"),
        ("ModelStatistics", "/v2/models/stats", "/v2/models/stats"),
        ("ModelStatistics", "/v2/models/mnist/stats", "/v2/models/{model_name}/stats"),
        ("ServerLive", "/v2/health/live", "/v2/health/live"),
        ("ServerMetadata", "/v2/", "/v2"),
        (
            "RepositoryModelLoad",
            "/v2/repository/models/m/load",
            "/v2/repository/models/{model_name}/load",
        ),
        ("StaticFile", "/", "/"),
        ("StaticFile", "/static/app.js", "/static/{file}"),
        (None, "/nothing/here", None),
    ],
)
def test_http_spans_are_named_by_route_template(
    operation: str | None, path: str, route: str | None
) -> None:
    # The span's name and `http.route` are the template of the route table's entry.
    found = routes.match("GET", path)
    if operation is None:
        assert found is None
    else:
        assert found is not None
        assert (found[0].operation, found[0].template) == (operation, route)


# --- the batcher ------------------------------------------------------------------------------


def echo(batch: np.ndarray) -> dict[str, np.ndarray]:
    return {"echo": batch.copy()}


def failing(batch: np.ndarray) -> dict[str, np.ndarray]:
    raise RuntimeError("the model broke")


def server_span_context(name: str) -> SpanContext:
    assert tracing.tracer is not None
    span = tracing.tracer.start_span(name)
    span.end()
    return span.get_span_context()


async def test_a_batch_links_to_each_call_and_ends_their_queue_spans(
    exported: InMemorySpanExporter,
) -> None:
    batcher = DynamicBatcher(
        echo,
        max_batch_size=8,
        max_queue_delay_s=60.0,  # until the batch is full
        trace_attributes={"mnist_serving.model.name": "mnist"},
    )
    await batcher.start()
    try:
        calls = [server_span_context(f"call-{index}") for index in range(3)]
        futures = [
            batcher.enqueue(np.zeros((2, *IMAGE_SHAPE), np.uint8), trace=calls[0]),
            batcher.enqueue(np.zeros((2, *IMAGE_SHAPE), np.uint8), trace=calls[1]),
            batcher.enqueue(np.zeros((2, *IMAGE_SHAPE), np.uint8)),  # not traced
            batcher.enqueue(np.zeros((2, *IMAGE_SHAPE), np.uint8), trace=calls[2]),
        ]
        await asyncio.gather(*futures)
    finally:
        await batcher.stop()
    spans = exported.get_finished_spans()
    (batch,) = named(spans, "batch")
    assert batch.parent is None
    assert [link.context for link in batch.links] == calls
    assert dict(batch.attributes or {}) == {
        "mnist_serving.model.name": "mnist",
        "mnist_serving.batch.size": 8,
        "mnist_serving.batch.requests": 4,
    }
    queues = named(spans, "queue")
    assert sorted(parent_id(queue) or 0 for queue in queues) == sorted(c.span_id for c in calls)
    assert all(queue.links[0].context == batch.context for queue in queues)
    (run,) = named(spans, "onnxruntime.run")
    assert parent_id(run) == batch.context.span_id


async def test_untraced_calls_make_no_batch_span(exported: InMemorySpanExporter) -> None:
    batcher = DynamicBatcher(echo)
    await batcher.start()
    try:
        await batcher.submit(np.zeros((1, *IMAGE_SHAPE), np.uint8))
    finally:
        await batcher.stop()
    assert exported.get_finished_spans() == ()


async def test_a_failed_batch_and_a_call_whose_deadline_passed_in_the_queue(
    exported: InMemorySpanExporter,
) -> None:
    now = [100.0]
    batcher = DynamicBatcher(failing, max_queue_delay_s=60.0, clock=lambda: now[0])
    await batcher.start()
    try:
        late = server_span_context("late")
        expired = batcher.enqueue(
            np.zeros((1, *IMAGE_SHAPE), np.uint8), deadline=now[0] + 1.0, trace=late
        )
        now[0] += 120.0  # past its deadline, and past the queue delay
        broken = batcher.enqueue(
            np.zeros((1, *IMAGE_SHAPE), np.uint8), trace=server_span_context("broken")
        )
        with pytest.raises(DeadlineExceededError):
            await expired
        with pytest.raises(RuntimeError):
            await broken
    finally:
        await batcher.stop()
    spans = exported.get_finished_spans()
    dropped = next(span for span in named(spans, "queue") if parent_id(span) == late.span_id)
    assert dropped.status.status_code is StatusCode.ERROR
    assert (dropped.attributes or {})["error.type"] == "DeadlineExceededError"
    (batch,) = named(spans, "batch")
    assert batch.status.status_code is StatusCode.ERROR
    assert (batch.attributes or {})["error.type"] == "RuntimeError"
    (run,) = named(spans, "onnxruntime.run")
    assert (run.attributes or {})["error.type"] == "RuntimeError"
