"""Prometheus metrics (docs/architecture.md lists them) and the `/metrics` HTTP server.

Everything lives on an explicit registry, so in-process tests can run several servers side
by side. Histograms (not summaries) so the figures aggregate across pods. Label values are
bounded sets: RPC names, gRPC status names, rejection reasons, and the one served model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Final, Protocol

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mnist_serving_server.core.batcher import DEFAULT_MAX_QUEUE_SIZE
from mnist_serving_server.core.errors import ServingError
from mnist_serving_server.grpc_api.grpc_errors import status_for

PREFIX = "mnist_serving"

# Latencies from a fraction of a millisecond (one image on an idle server) to seconds (a
# full queue, a slow client): roughly x2.5 steps.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
DEFAULT_MAX_BATCH_SIZE = 64
# How gauges combine across --workers processes (prometheus_client multiprocess mode; ignored
# in a single process): depths, capacities and in-flight counts add up over the workers
# alive (each worker has a queue of its own), the model info gauge is the same 1 in each.
GAUGE_SUM_OF_LIVE_WORKERS: Final = "livesum"
GAUGE_SAME_IN_EVERY_WORKER: Final = "livemax"

REASON_NOT_READY = "not_ready"
# "queue_full", "deadline" and "cancelled" come from the batcher; "not_ready" from the RPCs.
REJECTION_REASONS = ("queue_full", "deadline", "cancelled", REASON_NOT_READY)


class ModelInfoLike(Protocol):
    """The fields of runtime.ModelInfo that the model info gauge shows."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def provider(self) -> str: ...


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two from 1 up to max_batch_size, and max_batch_size itself."""
    buckets: list[float] = []
    size = 1
    while size < max_batch_size:
        buckets.append(float(size))
        size *= 2
    buckets.append(float(max_batch_size))
    return tuple(buckets)


class RequestRecord:
    """One RPC being handled, and its context manager; `code` None means "not decided yet".

    `finish(code)` counts the RPC at once. Error paths call it (via grpc_errors.abort_with)
    before `context.abort` sends the status, so the counters have moved by the time the
    caller sees its error; otherwise the RPC is counted when the `with` block exits.

    A plain class with __slots__ rather than a @contextmanager generator: it runs on every
    RPC, and this costs a third of the generator version (docs/performance.md).
    """

    __slots__ = ("_metrics", "_started", "code", "counted", "method")

    def __init__(self, metrics: ServerMetrics, method: str) -> None:
        self._metrics = metrics
        self.method = method
        self.code: grpc.StatusCode | None = None
        self.counted = False
        self._started = 0.0

    def __enter__(self) -> RequestRecord:
        self._started = time.perf_counter()
        self._metrics.inflight_requests.inc()
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
            elif isinstance(exc, ServingError):  # e.g. a stream item that did not parse
                self.code, _ = status_for(exc)
            else:
                self.code = grpc.StatusCode.INTERNAL
        self.finish(self.code or grpc.StatusCode.OK)

    def finish(self, code: grpc.StatusCode) -> None:
        """Count this RPC with `code` now (later calls, and the context exit, do nothing)."""
        if self.counted:
            return
        self.code = code
        self.counted = True
        metrics = self._metrics
        metrics.inflight_requests.dec()
        if code is grpc.StatusCode.UNAVAILABLE:  # warming up, shutting down, loop dead
            metrics.on_rejected(REASON_NOT_READY)
        metrics.count_request(self.method, code, time.perf_counter() - self._started)


class ServerMetrics:
    """All of the server's metrics; implements batcher.BatcherObserver."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    ) -> None:
        self.registry = registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "RPCs handled, by method and gRPC status (a stream counts once, when it ends).",
            ["method", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from an RPC's arrival at the servicer to its reply, by method.",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a request waited in the batcher's queue before its batch started.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_compute = Histogram(
            f"{PREFIX}_batch_compute_seconds",
            "ONNX Runtime time per batch.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Images per ONNX Runtime call.",
            buckets=batch_size_buckets(max_batch_size),
            registry=registry,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Images waiting in the batcher's queue.",
            registry=registry,
            multiprocess_mode=GAUGE_SUM_OF_LIVE_WORKERS,
        )
        # Set once: alerts and dashboards divide queue_depth by it, so a changed
        # MNIST_SERVING_MAX_QUEUE_SIZE needs no edit of the rules.
        self.queue_capacity = Gauge(
            f"{PREFIX}_queue_capacity",
            "Images the batcher's queue holds before it sheds load (max queue size).",
            registry=registry,
            multiprocess_mode=GAUGE_SUM_OF_LIVE_WORKERS,
        )
        self.queue_capacity.set(max_queue_size)
        self.inflight_requests = Gauge(
            f"{PREFIX}_inflight_requests",
            "RPCs being handled right now.",
            registry=registry,
            multiprocess_mode=GAUGE_SUM_OF_LIVE_WORKERS,
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections",
            "Requests refused or dropped before compute, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in REJECTION_REASONS:  # present at 0, so rate() works from the start
            self.rejections.labels(reason=reason)
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "The model being served (always 1).",
            ["model", "version", "sha256", "provider"],
            registry=registry,
            # Every worker serves the same model: one series with value 1, not one per worker.
            multiprocess_mode=GAUGE_SAME_IN_EVERY_WORKER,
        )
        self._model_info_set = False
        self._request_children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}

    # --- BatcherObserver ---------------------------------------------------------------

    def on_queue_depth(self, images: int) -> None:
        self.queue_depth.set(images)

    def on_batch(self, batch_size: int, queue_waits_s: Sequence[float], compute_s: float) -> None:
        self.batch_size.observe(batch_size)
        self.batch_compute.observe(compute_s)
        for wait_s in queue_waits_s:
            self.queue_wait.observe(wait_s)

    def on_rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    # --- per RPC -----------------------------------------------------------------------

    def count_request(self, method: str, code: grpc.StatusCode, duration_s: float) -> None:
        """Count one finished RPC and observe its duration."""
        children = self._request_children.get((method, code))
        if children is None:
            # labels() takes a lock and builds a key each time: look each child up once.
            children = (
                self.requests.labels(method=method, code=code.name),
                self.request_duration.labels(method=method),
            )
            self._request_children[(method, code)] = children
        counter, duration = children
        counter.inc()
        duration.observe(duration_s)

    def track_request(self, method: str) -> RequestRecord:
        """Time one RPC, hold the in-flight gauge, and count it when it ends (a `with` block).

        The servicer sets `record.code` when it answers with an error; if it does not, a
        normal exit counts OK, a cancelled handler CANCELLED, a ServingError its status and
        any other exception INTERNAL. An UNAVAILABLE answer also counts a `not_ready`
        rejection.
        """
        return RequestRecord(self, method)

    def set_model_info(self, info: ModelInfoLike) -> None:
        if self._model_info_set:
            # Only a second model needs this (clear() is not implemented, and warns, in
            # prometheus_client's multiprocess mode, which --workers uses).
            self.model_info.clear()
        self._model_info_set = True
        self.model_info.labels(
            model=info.name, version=info.version, sha256=info.sha256, provider=info.provider
        ).set(1)


class MetricsServer:
    """A running `/metrics` HTTP server (prometheus_client's, in a daemon thread)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def start_metrics_server(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[MetricsServer, int]:
    """Serve `registry` on http://host:port/metrics (port 0 = a free port); returns the bound port.

    Raises OSError when the port is taken.
    """
    server = MetricsServer(registry, host, port)
    return server, server.port


__all__ = [
    "LATENCY_BUCKETS_S",
    "REJECTION_REASONS",
    "MetricsServer",
    "RequestRecord",
    "ServerMetrics",
    "batch_size_buckets",
    "start_metrics_server",
]
