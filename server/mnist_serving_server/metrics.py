"""Prometheus metrics (docs/architecture.md lists them) and the `/metrics` HTTP server.

Everything lives on an explicit registry, so in-process tests can run several servers side
by side. Histograms (not summaries) so the figures aggregate across pods. Label values are
bounded sets: protocols, method names, status names, rejection reasons, and the models
and versions of the repository (only resolved ones: a request for an unknown model counts
with empty model and version).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from mnist_serving_server.core.batcher import (
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_QUEUE_SIZE,
    REASON_CANCELLED,
    REASON_DEADLINE,
    REASON_QUEUE_FULL,
)
from mnist_serving_server.core.monitoring import CONFIDENCE_BUCKETS, classifier_classes
from mnist_serving_server.core.registry import ModelState
from mnist_serving_server.core.runtime import ModelInfo

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
# How gauges combine across --workers processes (prometheus_client multiprocess mode; ignored
# in a single process): depths, capacities and in-flight counts add up over the workers
# alive (each worker has a queue of its own), the model info gauge is the same 1 in each.
GAUGE_SUM_OF_LIVE_WORKERS: Final = "livesum"
GAUGE_SAME_IN_EVERY_WORKER: Final = "livemax"
# Drift: each worker keeps its own window; /metrics shows the largest PSI of the live
# workers (the worst window), one series per model version and signal.
GAUGE_MAX_OF_LIVE_WORKERS: Final = "livemax"

MODEL_STATES: Final = tuple(state.value for state in ModelState)
READY_STATE: Final = ModelState.READY.value
RETIRED_STATE: Final = ModelState.UNAVAILABLE.value

REASON_NOT_READY = "not_ready"
# queue_full, deadline and cancelled come from the batcher; not_ready from the RPCs.
REJECTION_REASONS = (REASON_QUEUE_FULL, REASON_DEADLINE, REASON_CANCELLED, REASON_NOT_READY)


def batch_size_buckets(max_batch_size: int) -> tuple[float, ...]:
    """Powers of two from 1 up to max_batch_size, and max_batch_size itself."""
    buckets: list[float] = []
    size = 1
    while size < max_batch_size:
        buckets.append(float(size))
        size *= 2
    buckets.append(float(max_batch_size))
    return tuple(buckets)


class VersionObserver:
    """One model version's batch metrics (a BatcherObserver, and a MonitoringObserver:
    core/monitoring.py): children looked up once."""

    __slots__ = (
        "_batch_compute",
        "_batch_size",
        "_confidence",
        "_drift",
        "_metrics",
        "_model",
        "_predictions",
        "_queue_depth",
        "_queue_wait",
        "_version",
    )

    def __init__(
        self, metrics: ServerMetrics, model: str, version: str, labels: Sequence[str] = ()
    ) -> None:
        self._metrics = metrics
        self._model = model
        self._version = version
        self._queue_wait = metrics.queue_wait.labels(model=model, version=version)
        self._batch_compute = metrics.batch_compute.labels(model=model, version=version)
        self._batch_size = metrics.batch_size.labels(model=model, version=version)
        self._queue_depth = metrics.queue_depth.labels(model=model, version=version)
        # Classifiers only (labels given): one counter child per class, in class order.
        self._predictions = [
            metrics.predictions.labels(model=model, version=version, label=label)
            for label in labels
        ]
        self._confidence = (
            metrics.prediction_confidence.labels(model=model, version=version) if labels else None
        )
        self._drift: dict[str, Any] = {}  # by signal, created at the first value (absent until)

    def on_queue_depth(self, images: int) -> None:
        self._queue_depth.set(images)

    def on_batch(self, batch_size: int, queue_waits_s: Sequence[float], compute_s: float) -> None:
        self._batch_size.observe(batch_size)
        self._batch_compute.observe(compute_s)
        for wait_s in queue_waits_s:
            self._queue_wait.observe(wait_s)

    def on_rejected(self, reason: str) -> None:
        self._metrics.on_rejected(reason)

    def on_predictions(
        self, label_counts: np.ndarray, confidence_buckets: np.ndarray, confidence_sum: float
    ) -> None:
        predictions = self._predictions
        for index in np.flatnonzero(label_counts).tolist():
            predictions[index].inc(int(label_counts[index]))
        histogram = self._confidence
        if histogram is not None:
            # A whole batch at once (Histogram.observe takes one value): the per-bucket
            # counts Histogram.observe would have added, and the sum.
            buckets = histogram._buckets
            for index in np.flatnonzero(confidence_buckets).tolist():
                buckets[index].inc(int(confidence_buckets[index]))
            histogram._sum.inc(confidence_sum)

    def on_drift(self, psi: Mapping[str, float]) -> None:
        for signal, value in psi.items():
            gauge = self._drift.get(signal)
            if gauge is None:
                gauge = self._drift[signal] = self._metrics.drift_psi.labels(
                    model=self._model, version=self._version, signal=signal
                )
            gauge.set(value)

    def on_shadow(self, shadow_version: str, outcome: str, images: int) -> None:
        self._metrics.shadow_images.labels(
            model=self._model, version=self._version, shadow_version=shadow_version, outcome=outcome
        ).inc(images)


class ServerMetrics:
    """All of the server's metrics. Transports count their requests with `count_request`."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    ) -> None:
        self.registry = registry
        self._max_queue_size = max_queue_size
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests handled, by protocol, method, model, version and status (a stream "
            "counts once, when it ends; model and version are empty when none was resolved).",
            ["protocol", "method", "model", "version", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from a request's arrival at its handler to its reply.",
            ["protocol", "method", "model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        version_labels = ["model", "version"]
        self.queue_wait = Histogram(
            f"{PREFIX}_queue_wait_seconds",
            "Time a request waited in its model version's queue before its batch started.",
            version_labels,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_compute = Histogram(
            f"{PREFIX}_batch_compute_seconds",
            "ONNX Runtime time per batch.",
            version_labels,
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Images per ONNX Runtime call.",
            version_labels,
            buckets=batch_size_buckets(max_batch_size),
            registry=registry,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth",
            "Images waiting in a model version's queue.",
            version_labels,
            registry=registry,
            multiprocess_mode=GAUGE_SUM_OF_LIVE_WORKERS,
        )
        # Set per version: alerts and dashboards divide queue_depth by it, so a changed
        # MNIST_SERVING_MAX_QUEUE_SIZE needs no edit of the rules.
        self.queue_capacity = Gauge(
            f"{PREFIX}_queue_capacity",
            "Images a model version's queue holds before it sheds load (max queue size).",
            version_labels,
            registry=registry,
            multiprocess_mode=GAUGE_SUM_OF_LIVE_WORKERS,
        )
        self.inflight_requests = Gauge(
            f"{PREFIX}_inflight_requests",
            "Requests being handled right now.",
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
            "A served model version (1; 0 once it is retired).",
            ["model", "version", "sha256", "provider"],
            registry=registry,
            # Every worker serves the same models: one series with value 1, not one per worker.
            multiprocess_mode=GAUGE_SAME_IN_EVERY_WORKER,
        )
        self.model_state = Gauge(
            f"{PREFIX}_model_state",
            "1 for a model version's current state (READY, LOADING, UNLOADING, UNAVAILABLE), "
            "0 for the others.",
            ["model", "version", "state"],
            registry=registry,
            multiprocess_mode=GAUGE_SAME_IN_EVERY_WORKER,
        )
        self.predictions = Counter(
            f"{PREFIX}_predictions",
            "Images answered by a classifier version, by top-1 label.",
            ["model", "version", "label"],
            registry=registry,
        )
        self.prediction_confidence = Histogram(
            f"{PREFIX}_prediction_confidence",
            "Top-1 probability of each image a classifier version answered.",
            version_labels,
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.drift_psi = Gauge(
            f"{PREFIX}_drift_psi",
            "Population stability index of the last window of images against the version's "
            "reference profile, by signal (label, confidence, input); absent until the "
            "window is full or without a reference.",
            ["model", "version", "signal"],
            registry=registry,
            multiprocess_mode=GAUGE_MAX_OF_LIVE_WORKERS,
        )
        self.shadow_images = Counter(
            f"{PREFIX}_shadow_images",
            "Images of a serving version copied to its shadow version, by outcome (agree, "
            "disagree: top-1 labels compared; dropped: the shadow's queue was full).",
            ["model", "version", "shadow_version", "outcome"],
            registry=registry,
        )
        self._request_children: dict[tuple[str, str, str, str, str], tuple[Any, Any]] = {}

    def version_observer(self, info: ModelInfo) -> VersionObserver:
        """The batch metrics of one model version (its queue capacity is set here)."""
        self.queue_capacity.labels(model=info.name, version=info.version).set(self._max_queue_size)
        labels = info.labels if classifier_classes(info) else ()
        return VersionObserver(self, info.name, info.version, labels)

    def on_rejected(self, reason: str, count: int = 1) -> None:
        self.rejections.labels(reason=reason).inc(count)

    def on_model_state(self, model: str, version: str, state: str, info: ModelInfo | None) -> None:
        """Follow a model version's state (the registry's StateListener)."""
        for known in MODEL_STATES:
            self.model_state.labels(model=model, version=version, state=known).set(
                1 if known == state else 0
            )
        if info is not None and state in (READY_STATE, RETIRED_STATE):
            self.model_info.labels(
                model=info.name, version=info.version, sha256=info.sha256, provider=info.provider
            ).set(1 if state == READY_STATE else 0)

    # --- per request -------------------------------------------------------------------

    def count_request(
        self,
        protocol: str,
        method: str,
        model: str,
        version: str,
        code: str,
        duration_s: float,
    ) -> None:
        """Count one finished request and observe its duration."""
        key = (protocol, method, model, version, code)
        children = self._request_children.get(key)
        if children is None:
            # labels() takes a lock and builds a key each time: look each child up once.
            children = (
                self.requests.labels(
                    protocol=protocol, method=method, model=model, version=version, code=code
                ),
                self.request_duration.labels(
                    protocol=protocol, method=method, model=model, version=version
                ),
            )
            self._request_children[key] = children
        counter, duration = children
        counter.inc()
        duration.observe(duration_s)


class MetricsServer:
    """A running `/metrics` HTTP server (prometheus_client's, in a daemon thread)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port: int = int(self._httpd.server_address[1])

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    """Serve `registry` on http://host:port/metrics (port 0 = a free port; the bound one is
    its `port`). Raises OSError when the port is taken.
    """
    return MetricsServer(registry, host, port)


__all__ = [
    "LATENCY_BUCKETS_S",
    "REJECTION_REASONS",
    "MetricsServer",
    "ServerMetrics",
    "VersionObserver",
    "batch_size_buckets",
    "start_metrics_server",
]
