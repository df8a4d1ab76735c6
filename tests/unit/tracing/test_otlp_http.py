"""The OTLP/HTTP exporter (otlp_spans.py) on its own: the OTEL_EXPORTER_OTLP_* variables
read as the SDK's exporter reads them, what it sends, how it retries, and that it uses the
OpenTelemetry SDK's public API only."""

from __future__ import annotations

import ast
import gzip
import os
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mnist_serving_server import otlp_spans
from mnist_serving_server.otlp_spans import OtlpHttpSettings, OtlpHttpSpanExporter

LOOPBACK = "127.0.0.1"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class ScriptedCollector:
    """An OTLP/HTTP endpoint answering each POST with the next (status, headers) of
    `answers` (200 once they run out), keeping what it was sent."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    def serve(self) -> ThreadingHTTPServer:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                collector.received.append(Received(self.path, headers, body))
                status, extra = collector.answers.pop(0) if collector.answers else (200, {})
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

        server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True).start()
        return server


@pytest.fixture
def collector() -> Iterator[tuple[ScriptedCollector, str]]:
    scripted = ScriptedCollector()
    server = scripted.serve()
    yield scripted, f"http://{LOOPBACK}:{server.server_address[1]}/v1/traces"
    server.shutdown()
    server.server_close()


@pytest.fixture
def spans() -> Iterator[tuple[ReadableSpan, ...]]:
    keep = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource({"service.name": "t"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(keep))
    with provider.get_tracer("tests").start_as_current_span("call", attributes={"n": 1}):
        provider.get_tracer("tests").start_span("child").end()
    yield keep.get_finished_spans()
    provider.shutdown()


def _sdk_settings(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> Any:
    """What the SDK's own exporter makes of these variables (its private attributes: for
    this comparison only, never in the server)."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    exporter = SdkHttpSpanExporter()
    client = exporter._client
    exporter.shutdown()  # type: ignore[no-untyped-call]
    return client._endpoint, client._headers, client._timeout, client._compression.value


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector:4318/base"},
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://ignored:1",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:9/custom/path",
        },
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc,X-Tenant=a%20b",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2.5",
        },
        {
            "OTEL_EXPORTER_OTLP_HEADERS": "ignored=1",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Authorization=Bearer xyz",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "7",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3",
        },
        {"OTEL_EXPORTER_OTLP_COMPRESSION": "GZIP"},
        {
            "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "deflate",
        },
        {"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli", "OTEL_EXPORTER_OTLP_TIMEOUT": "soon"},
        {
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_HEADERS": "content-encoding=gzip",
        },
    ],
)
def test_the_variables_are_read_as_the_sdk_exporter_reads_them(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]
) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(name)
    ours = OtlpHttpSettings.from_environ(environ)
    endpoint, headers, timeout, compression = _sdk_settings(monkeypatch, environ)
    assert ours.endpoint == endpoint
    assert ours.timeout_s == timeout
    assert ours.compression == compression
    sent = {name.lower(): value for name, value in headers.items()}
    assert dict(ours.headers) == sent


def test_certificates_come_from_the_traces_variable_or_the_general_one() -> None:
    settings = OtlpHttpSettings.from_environ(
        {
            "OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem",
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": "/client.pem",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/client.key",
        }
    )
    assert settings.verify == "/ca.pem"
    assert settings.cert == ("/client.pem", "/client.key")
    alone = OtlpHttpSettings.from_environ({"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/both.pem"})
    assert (alone.verify, alone.cert) == (True, "/both.pem")
    exporter = OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": "/ca.pem"})
    assert exporter._session.verify == "/ca.pem"
    exporter.shutdown()


@pytest.mark.parametrize(
    ("compression", "decompress"), [("gzip", gzip.decompress), ("deflate", zlib.decompress)]
)
def test_a_batch_is_posted_with_its_headers_compressed_as_configured(
    collector: tuple[ScriptedCollector, str],
    spans: tuple[ReadableSpan, ...],
    compression: str,
    decompress: Any,
) -> None:
    scripted, endpoint = collector
    exporter = OtlpHttpSpanExporter(
        {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret",
            "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
        }
    )
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    [sent] = scripted.received
    assert sent.path == "/v1/traces"
    assert sent.headers["content-type"] == "application/x-protobuf"
    assert sent.headers["content-encoding"] == compression
    assert sent.headers["api-key"] == "s3cret"
    assert sent.headers["user-agent"].startswith("OTel-OTLP-Exporter-Python/")
    assert decompress(sent.body) == encode_spans(spans).SerializeToString()


def test_a_transient_answer_is_retried_after_its_retry_after(
    collector: tuple[ScriptedCollector, str], spans: tuple[ReadableSpan, ...]
) -> None:
    scripted, endpoint = collector
    scripted.answers = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})]
    exporter = OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint})
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert len(scripted.received) == 3
    assert len({received.body for received in scripted.received}) == 1


def test_a_refusal_is_not_retried(
    collector: tuple[ScriptedCollector, str], spans: tuple[ReadableSpan, ...]
) -> None:
    scripted, endpoint = collector
    scripted.answers = [(400, {})]
    exporter = OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint})
    assert exporter.export(spans) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert len(scripted.received) == 1


def test_no_retry_waits_past_the_timeout(
    collector: tuple[ScriptedCollector, str], spans: tuple[ReadableSpan, ...]
) -> None:
    scripted, endpoint = collector
    scripted.answers = [(503, {"Retry-After": "30"})]
    exporter = OtlpHttpSpanExporter(
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2"}
    )
    started = time.monotonic()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 1.5
    exporter.shutdown()
    assert len(scripted.received) == 1


def test_a_shutdown_ends_a_retry_wait(
    collector: tuple[ScriptedCollector, str], spans: tuple[ReadableSpan, ...]
) -> None:
    scripted, endpoint = collector
    scripted.answers = [(503, {"Retry-After": "20"})]
    exporter = OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint})
    results: list[SpanExportResult] = []
    exporting = threading.Thread(target=lambda: results.append(exporter.export(spans)))
    started = time.monotonic()
    exporting.start()
    while not scripted.received:
        time.sleep(0.01)
    exporter.shutdown()
    exporting.join(5)
    assert results == [SpanExportResult.FAILURE]
    assert time.monotonic() - started < 5
    assert exporter.export(spans) is SpanExportResult.FAILURE  # after shutdown: refused


def test_a_body_over_the_size_limit_is_dropped_unsent(
    collector: tuple[ScriptedCollector, str],
    spans: tuple[ReadableSpan, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripted, endpoint = collector
    monkeypatch.setattr(otlp_spans, "MAX_REQUEST_BYTES", 10)
    exporter = OtlpHttpSpanExporter({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint})
    assert exporter.export(spans) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert scripted.received == []


def _private(name: str) -> bool:
    """A leading underscore in any part; a dunder (`__version__`) is public."""
    return any(
        part.startswith("_") and not (part.startswith("__") and part.endswith("__"))
        for part in name.split(".")
    )


def test_the_exporter_uses_the_public_opentelemetry_api_only() -> None:
    """No private OpenTelemetry module, name or attribute: an SDK upgrade may move those."""
    opentelemetry_bases = [
        base for base in OtlpHttpSpanExporter.__mro__ if base.__module__.startswith("opentelemetry")
    ]
    assert opentelemetry_bases == [SpanExporter]  # the interface, no exporter's internals
    tree = ast.parse(Path(otlp_spans.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("opentelemetry"):
            assert not _private(node.module or ""), node.module
            assert not [alias.name for alias in node.names if _private(alias.name)]
        elif isinstance(node, ast.Import):
            assert not [alias.name for alias in node.names if _private(alias.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            # Only this module's own objects' private attributes.
            assert isinstance(node.value, ast.Name), ast.unparse(node)
            assert node.value.id in {"self", "cls"}, ast.unparse(node)
