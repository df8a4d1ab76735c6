"""An OTLP/HTTP trace endpoint that accepts every export and keeps only counts.

`make bench` runs a `--tracing on` configuration against it, so that the traced server
pays for what a traced server pays in production (its spans built, batched, serialised
and POSTed), while the collector's own cost stays out of the server's CPU figures (it runs
in the bench's process, not the server's).
"""

from __future__ import annotations

import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final

LOOPBACK: Final = "127.0.0.1"
TRACES_PATH: Final = "/v1/traces"
# Every call sampled, whatever the caller sent: the cost measured is tracing's worst case.
SAMPLER_ENVIRONMENT: Final = {"OTEL_TRACES_SAMPLER": "always_on"}


class _ExportHandler(BaseHTTPRequestHandler):
    server: _SinkServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.count(length)
        # An empty ExportTraceServiceResponse: every span accepted.
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: one export every few hundred milliseconds is not news."""


class _SinkServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _ExportHandler)
        self._lock = threading.Lock()
        self.exports = 0
        self.bytes_received = 0

    def count(self, size: int) -> None:
        with self._lock:
            self.exports += 1
            self.bytes_received += size


class DiscardingCollector:
    """`with DiscardingCollector() as sink:` an endpoint on 127.0.0.1, port chosen by the OS."""

    def __init__(self) -> None:
        self._server = _SinkServer()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="otlp-sink", daemon=True
        )

    @property
    def endpoint(self) -> str:
        port = self._server.server_address[1]
        return f"http://{LOOPBACK}:{port}{TRACES_PATH}"

    @property
    def exports(self) -> int:
        return self._server.exports

    def exporter_environment(self) -> dict[str, str]:
        """The standard OTel variables that point a server's exporter here."""
        return {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            **SAMPLER_ENVIRONMENT,
        }

    def __enter__(self) -> DiscardingCollector:
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
