"""A real OTLP/HTTP trace endpoint for tests: it decodes every export and keeps the spans.

`with OtlpCollector() as collector:` serves `POST /v1/traces` on 127.0.0.1 (a port chosen
by the OS) as an OpenTelemetry Collector does: the body is an `ExportTraceServiceRequest`
(opentelemetry-proto), answered with an empty `ExportTraceServiceResponse`. Point a server
at it with `collector.environment()`; `wait_for` polls for the spans a test expects, up to
a deadline, since the server exports in batches, off the request path.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

LOOPBACK: Final = "127.0.0.1"
TRACES_PATH: Final = "/v1/traces"
PROTOBUF_TYPE: Final = "application/x-protobuf"
WAIT_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.05
# A short export delay (the SDK's default is 5 s): a test waits for its spans, not for that.
SCHEDULE_DELAY_MS: Final = "100"

# opentelemetry-proto's enums, as the tests compare them.
SPAN_KIND_INTERNAL: Final = trace_pb2.Span.SpanKind.SPAN_KIND_INTERNAL
SPAN_KIND_SERVER: Final = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
STATUS_UNSET: Final = trace_pb2.Status.StatusCode.STATUS_CODE_UNSET
STATUS_ERROR: Final = trace_pb2.Status.StatusCode.STATUS_CODE_ERROR


def _value(any_value: common_pb2.AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    if kind == "kvlist_value":
        return {item.key: _value(item.value) for item in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str


@dataclass(frozen=True)
class CollectedSpan:
    """One exported span, ids in W3C hex (parent_span_id "" for a root span)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    start_ns: int
    end_ns: int
    links: tuple[Link, ...]
    resource: dict[str, Any] = field(repr=False)

    @classmethod
    def from_proto(cls, span: trace_pb2.Span, resource: dict[str, Any]) -> CollectedSpan:
        return cls(
            name=span.name,
            trace_id=span.trace_id.hex(),
            span_id=span.span_id.hex(),
            parent_span_id=span.parent_span_id.hex(),
            kind=span.kind,
            attributes=_attributes(span.attributes),
            status_code=span.status.code,
            status_message=span.status.message,
            start_ns=span.start_time_unix_nano,
            end_ns=span.end_time_unix_nano,
            links=tuple(Link(link.trace_id.hex(), link.span_id.hex()) for link in span.links),
            resource=resource,
        )


class _ExportHandler(BaseHTTPRequestHandler):
    server: _CollectorServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != TRACES_PATH:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        self.server.add(export)
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", PROTOBUF_TYPE)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the test reports what it finds."""


class _CollectorServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _ExportHandler)
        self._lock = threading.Lock()
        self.spans: list[CollectedSpan] = []
        self.exports = 0

    def add(self, export: trace_service_pb2.ExportTraceServiceRequest) -> None:
        spans = [
            CollectedSpan.from_proto(span, _attributes(resource_spans.resource.attributes))
            for resource_spans in export.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._lock:
            self.spans.extend(spans)
            self.exports += 1


class OtlpCollector:
    """An OTLP/HTTP endpoint that keeps every span it is sent (see the module's doc)."""

    def __init__(self) -> None:
        self._server = _CollectorServer()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-collector", daemon=True
        )

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self._server.server_address[1]}{TRACES_PATH}"

    def environment(self, **variables: str) -> dict[str, str]:
        """The standard variables that point a server's exporter here (and `variables`)."""
        return {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": SCHEDULE_DELAY_MS,
            **variables,
        }

    def spans(self) -> list[CollectedSpan]:
        """Every span received so far."""
        with self._server._lock:
            return list(self._server.spans)

    def wait_for(
        self,
        found: Callable[[list[CollectedSpan]], bool],
        what: str,
        timeout_s: float = WAIT_TIMEOUT_S,
    ) -> list[CollectedSpan]:
        """Every span received, once `found(spans)` holds; AssertionError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if found(spans):
                return spans
            if time.monotonic() > deadline:
                names = sorted({span.name for span in spans})
                raise AssertionError(
                    f"no {what} within {timeout_s} s; {len(spans)} spans received: {names}"
                )
            time.sleep(POLL_S)

    def wait_for_trace(
        self, trace_id: str, names: set[str], timeout_s: float = WAIT_TIMEOUT_S
    ) -> list[CollectedSpan]:
        """The spans of trace `trace_id`, once it holds a span of each name in `names`."""

        def complete(spans: list[CollectedSpan]) -> bool:
            return names <= {span.name for span in spans if span.trace_id == trace_id}

        spans = self.wait_for(complete, f"spans {sorted(names)} in trace {trace_id}", timeout_s)
        return [span for span in spans if span.trace_id == trace_id]

    def __enter__(self) -> OtlpCollector:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
