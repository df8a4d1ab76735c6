"""Per model version statistics, as Triton's statistics extension reports them.

Counts and cumulative nanoseconds, never reset while the version is served. The batcher
feeds the per-batch figures (queue, compute, batch sizes); the dataplane the per-request
outcome (success or failure and its duration), which is two additions per request.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mnist_serving_server.core.batcher import BatcherObserver

NANOSECONDS_PER_SECOND = 1_000_000_000


@dataclass
class Duration:
    """How many events and their total time (Triton's StatisticDuration)."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * NANOSECONDS_PER_SECOND)


@dataclass
class BatchSizeStatistics:
    """Batches of one size: how many and their compute time."""

    count: int = 0
    compute_ns: int = 0


@dataclass
class VersionStatistics:
    """What one served model version has done since it was loaded."""

    inference_count: int = 0
    """Images computed (Triton counts each batch row as one inference)."""
    execution_count: int = 0
    """Model executions (batches)."""
    last_inference_ms: int = 0
    """Wall-clock time of the last batch, milliseconds since the epoch (0 = never)."""
    success: Duration = field(default_factory=Duration)
    """Requests answered, with their time from arrival at the dataplane to the answer."""
    fail: Duration = field(default_factory=Duration)
    """Requests that failed (bad input, queue full, deadline, model error)."""
    queue: Duration = field(default_factory=Duration)
    """Time requests waited in the queue."""
    compute_infer: Duration = field(default_factory=Duration)
    """Model time, counted once per request in a batch (Triton's convention)."""
    batches: dict[int, BatchSizeStatistics] = field(default_factory=dict)

    def record_batch(
        self, batch_size: int, queue_waits_s: Sequence[float], compute_s: float
    ) -> None:
        self.inference_count += batch_size
        self.execution_count += 1
        self.last_inference_ms = time.time_ns() // 1_000_000
        compute_ns = int(compute_s * NANOSECONDS_PER_SECOND)
        for wait_s in queue_waits_s:
            self.queue.add(wait_s)
        self.compute_infer.count += len(queue_waits_s)
        self.compute_infer.ns += compute_ns * len(queue_waits_s)
        by_size = self.batches.get(batch_size)
        if by_size is None:
            by_size = self.batches[batch_size] = BatchSizeStatistics()
        by_size.count += 1
        by_size.compute_ns += compute_ns


class StatisticsObserver:
    """A BatcherObserver that records into VersionStatistics and forwards to another one."""

    def __init__(self, statistics: VersionStatistics, forward: BatcherObserver | None) -> None:
        self._statistics = statistics
        self._forward = forward

    def on_queue_depth(self, images: int) -> None:
        if self._forward is not None:
            self._forward.on_queue_depth(images)

    def on_batch(self, batch_size: int, queue_waits_s: Sequence[float], compute_s: float) -> None:
        self._statistics.record_batch(batch_size, queue_waits_s, compute_s)
        if self._forward is not None:
            self._forward.on_batch(batch_size, queue_waits_s, compute_s)

    def on_rejected(self, reason: str) -> None:
        if self._forward is not None:
            self._forward.on_rejected(reason)
