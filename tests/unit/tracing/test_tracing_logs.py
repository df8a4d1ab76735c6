"""JSON log lines carry the current span's trace and span ids, and nothing when none is."""

from __future__ import annotations

import json
import logging

from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mnist_serving_server.core import tracing
from mnist_serving_server.logs import JsonFormatter, TextFormatter

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331


def record() -> logging.LogRecord:
    return logging.LogRecord("mnist", logging.ERROR, __file__, 1, "failed", (), None)


def test_a_line_written_under_a_span_names_its_trace_and_span() -> None:
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(1)))
    with tracing.current_span(span):
        line = json.loads(JsonFormatter().format(record()))
    assert line["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert line["span_id"] == "b7ad6b7169203331"
    assert line["message"] == "failed"


def test_a_line_written_outside_any_span_has_no_ids() -> None:
    line = json.loads(JsonFormatter().format(record()))
    assert "trace_id" not in line
    assert "span_id" not in line


def test_the_text_format_is_unchanged_under_a_span() -> None:
    span = NonRecordingSpan(SpanContext(TRACE_ID, SPAN_ID, False, TraceFlags(1)))
    with tracing.current_span(span):
        assert "trace_id" not in TextFormatter().format(record())
