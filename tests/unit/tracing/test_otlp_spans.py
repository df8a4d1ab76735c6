"""The OTLP span writer (otlp_spans.py) against the SDK's own encoder, and its exporter
against a real OTLP/HTTP endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from mnist_serving_server import otlp_spans
from mnist_serving_server.otlp_spans import OtlpHttpSpanExporter, SpanEncoder
from tests.otlp_collector import OtlpCollector

REMOTE_PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "value"), ("other", "x")]),
)


def _recorded(provider: TracerProvider, keep: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    """Spans of every shape the writer spells: server spans with a remote parent and trace
    state, children, links with attributes, events, errors, every attribute type, limits."""
    tracer = provider.get_tracer("tests", "1.2.3", schema_url="https://opentelemetry.io/s/1")
    other = provider.get_tracer("other-scope")
    server = tracer.start_span(
        "inference.GRPCInferenceService/ModelInfer",
        context=trace.set_span_in_context(NonRecordingSpan(REMOTE_PARENT)),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.method": "ModelInfer"},
    )
    child = tracer.start_span(
        "queue",
        context=trace.set_span_in_context(server),
        links=[Link(server.get_span_context(), {"weight": 2, "ratio": 0.5})],
    )
    child.end()
    batch = other.start_span("batch", links=[Link(REMOTE_PARENT), Link(child.get_span_context())])
    batch.set_attributes({"size": 300, "negative": -7, "on": True, "off": False, "big": 2**40})
    batch.set_status(Status(StatusCode.OK))
    batch.end()
    server.set_attributes(
        {
            "rpc.grpc.status_code": 4,
            "ratio": 1.25,
            "empty": "",
            "names": ("a", "b"),
            "counts": [1, 2, 3],
            "flags": [True, False],
            "long text": "é" * 200,
        }
    )
    server.add_event("retried", {"attempt": 2})
    server.set_status(Status(StatusCode.ERROR, "DEADLINE_EXCEEDED"))
    server.end()
    tracer.start_span("internal", kind=SpanKind.INTERNAL).end()
    for kind in (SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER):
        tracer.start_span(kind.name.lower(), kind=kind).end()
    return keep.get_finished_spans()


@pytest.fixture
def spans() -> Iterator[tuple[ReadableSpan, ...]]:
    keep = InMemorySpanExporter()
    # Small limits, so that dropped attributes, events and links are counted too.
    limits = SpanLimits(max_span_attributes=6, max_links=1, max_events=0)
    provider = TracerProvider(
        resource=Resource({"service.name": "mnist-serving", "pid": 7}, "https://schema/1"),
        span_limits=limits,
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(keep))
    yield _recorded(provider, keep)
    provider.shutdown()


def test_the_request_is_what_the_sdk_encodes_byte_for_byte(spans: tuple[ReadableSpan, ...]) -> None:
    written = SpanEncoder().encode(spans)
    assert ExportTraceServiceRequest.FromString(written) == encode_spans(spans)
    assert written == encode_spans(spans).SerializeToString()


def test_events_and_list_and_map_values_are_written_as_the_sdk_writes_them() -> None:
    keep = InMemorySpanExporter()
    resource = Resource({"service.name": "mnist-serving", "hosts": ("a", "b")})
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer("tests", attributes={"scope.kind": "unit", "ids": (1, 2)})
    with tracer.start_as_current_span("events", attributes={"sizes": [0.5, -1.0]}) as span:
        span.add_event("started")
        span.add_event("retried", {"attempt": 2, "codes": ["UNAVAILABLE"], "ok": False})
    # A span as a processor may hand over: raw values the SDK's API would have cleaned.
    raw = ReadableSpan(
        name="raw",
        context=REMOTE_PARENT,
        attributes={"map": {"a": 1, "b": [1, None]}, "none": None, "empty": [], "bytes": b"\0"},
        events=[Event("raw event", {"nested": {"k": "v"}}, timestamp=5)],
        resource=Resource({}),
    )
    spans = [*keep.get_finished_spans(), raw]
    assert SpanEncoder().encode(spans) == encode_spans(spans).SerializeToString()
    provider.shutdown()


def test_an_attribute_with_no_otlp_form_is_left_out_as_the_sdk_leaves_it_out() -> None:
    attributes: dict[str, Any] = {"kept": 1, "object": object(), "also kept": "x"}
    odd = ReadableSpan(
        name="odd",
        context=REMOTE_PARENT,
        attributes=attributes,
        resource=Resource({}),
    )
    written = SpanEncoder().encode([odd])
    assert written == encode_spans([odd]).SerializeToString()
    [kept] = ExportTraceServiceRequest.FromString(written).resource_spans[0].scope_spans
    assert [pair.key for pair in kept.spans[0].attributes] == ["kept", "also kept"]


def test_spans_of_several_resources_are_grouped_as_the_sdk_groups_them(
    spans: tuple[ReadableSpan, ...],
) -> None:
    keep = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "second"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(keep))
    provider.get_tracer("tests").start_span("elsewhere").end()
    mixed = [spans[0], *keep.get_finished_spans(), *spans[1:]]
    decoded = ExportTraceServiceRequest.FromString(SpanEncoder().encode(mixed))
    assert decoded == encode_spans(mixed)
    assert len(decoded.resource_spans) == 2
    provider.shutdown()


def test_an_encoder_gives_the_same_bytes_every_time_and_after_its_memo_is_full(
    spans: tuple[ReadableSpan, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = SpanEncoder()
    first = encoder.encode(spans)
    assert encoder.encode(spans) == first  # resources, scopes and pairs from the memo
    monkeypatch.setattr(otlp_spans, "_KEY_VALUE_MEMO_SIZE", 2)
    assert encoder.encode(spans) == first  # the memo emptied on the way, same bytes


def test_the_exporter_sends_what_the_sdk_exporter_sends(
    spans: tuple[ReadableSpan, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpCollector() as collector:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.endpoint)
        ours = OtlpHttpSpanExporter()
        assert ours.export(spans) is SpanExportResult.SUCCESS
        sent = collector.wait_for(lambda got: len(got) == len(spans), "our export")
        sdk = SdkHttpSpanExporter()
        assert sdk.export(spans) is SpanExportResult.SUCCESS
        both = collector.wait_for(lambda got: len(got) == 2 * len(spans), "the SDK's export")
        ours.shutdown()
        sdk.shutdown()  # type: ignore[no-untyped-call]
    assert sent == both[len(spans) :]
    assert {span.name for span in sent} >= {"queue", "batch", "internal"}


def test_the_exporter_reports_a_failure_when_no_collector_answers(
    spans: tuple[ReadableSpan, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    with OtlpCollector() as collector:
        endpoint = collector.endpoint  # a port that was just free, and is closed again
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    exporter = OtlpHttpSpanExporter()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown: refused
