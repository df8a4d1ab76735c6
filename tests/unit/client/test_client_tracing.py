"""The SDK sends the caller's trace context when a span is current, and nothing otherwise."""

from __future__ import annotations

from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span

from mnist_serving_client.tracing import TRACING_AVAILABLE, trace_metadata

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


def test_no_current_span_sends_no_metadata() -> None:
    assert TRACING_AVAILABLE  # opentelemetry-api is in the dev environment
    assert trace_metadata() == ()


def test_the_current_span_goes_out_as_a_w3c_traceparent() -> None:
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(1)))
    with use_span(span):
        metadata = dict(trace_metadata())
    assert metadata["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert all(key == key.lower() for key in metadata)  # gRPC metadata keys are lower case
