"""Logging set-up: human text or JSON lines, one level for the whole process.

Key facts travel as `extra={"fields": {...}}`: the text format appends them as key=value,
the JSON format as top-level keys, so log pipelines can filter on `grpc_port` or `sha256`.
Nothing logs per request at INFO: at thousands of requests per second that would cost more
than the model. A JSON line written while a span is current (tracing on: a call's server
span in its handler, a batch's span when it fails) carries `trace_id` and `span_id`, the
W3C hex forms a tracing backend (Tempo, Jaeger) searches by.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

FIELDS_ATTRIBUTE = "fields"
TRACE_ID_KEY = "trace_id"
SPAN_ID_KEY = "span_id"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The `grpc` and `asyncio` loggers are chatty at INFO; keep them at WARNING. (ONNX Runtime
# logs through its own C++ logger, not Python's logging: its verbosity is a session option.)
NOISY_LOGGERS = ("grpc", "asyncio")


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, FIELDS_ATTRIBUTE, None)
    return fields if isinstance(fields, Mapping) else {}


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the fields, exc_info if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry[TRACE_ID_KEY] = trace.format_trace_id(span_context.trace_id)
            entry[SPAN_ID_KEY] = trace.format_span_id(span_context.span_id)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, level: str, stream: TextIO | None = None) -> None:
    """Route the root logger to stderr (or `stream`) in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


def log_fields(**fields: Any) -> dict[str, Any]:
    """`logger.info("started", extra=log_fields(port=8001))`."""
    return {FIELDS_ATTRIBUTE: fields}
