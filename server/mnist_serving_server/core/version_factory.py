"""What one served model version is built from: its runtime, its batcher, its statistics.

The registry decides which versions serve and when they swap (core/registry.py); a
`VersionFactory` builds one version's parts. The default, `OnnxVersionFactory`, loads the
ONNX Runtime session in a worker thread, checks the graph (core/graph_checks.py) and
warms it up (batch 1 and the largest; on CUDA every padded batch size,
core/runtime.py), all within the load timeout, then starts a
DynamicBatcher whose batches are counted in the version's statistics and forwarded to the
observer (the metrics).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mnist_serving_server.core.batcher import BatcherObserver, DynamicBatcher
from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.graph_checks import check_contract
from mnist_serving_server.core.model_config import ModelConfig
from mnist_serving_server.core.monitoring import (
    DEFAULT_WINDOW,
    PROFILE_FILE_NAME,
    MonitoringObserver,
    monitor_for,
)
from mnist_serving_server.core.runtime import ModelInfo, ModelRuntime
from mnist_serving_server.core.shadow import BatchTap
from mnist_serving_server.core.statistics import StatisticsObserver, VersionStatistics
from mnist_serving_server.core.tracing import batch_attributes

ObserverFactory = Callable[[ModelInfo], BatcherObserver]
"""The observer of one version's batches (the metrics' per-version observer)."""
FailureListener = Callable[[BaseException], None]


@dataclass(frozen=True)
class VersionParts:
    """One model version, ready to serve: its batcher is started."""

    runtime: ModelRuntime
    batcher: DynamicBatcher
    statistics: VersionStatistics
    tap: BatchTap | None = None
    """What its batcher calls with each batch's outputs: monitoring and the shadow link."""


class VersionFactory(Protocol):
    """Builds the parts of one model version (the registry's only way to make one)."""

    async def build(
        self,
        path: Path,
        name: str,
        version: str,
        config: ModelConfig,
        *,
        on_failure: FailureListener,
    ) -> VersionParts:
        """Load `path` as `version` of `name`, check it, warm it up and start its batcher.

        ModelLoadError when it cannot be served. `on_failure` is called (on the loop) if
        the batch loop dies later.
        """
        ...


class OnnxVersionFactory:
    """ONNX Runtime sessions behind DynamicBatchers (the server's factory)."""

    def __init__(
        self,
        *,
        provider: str,
        intra_op_threads: int,
        max_queue_size: int,
        load_timeout_s: float,
        batch_latency_target_s: float = 0.0,
        observer_for: ObserverFactory | None = None,
        monitoring_window: int = DEFAULT_WINDOW,
    ) -> None:
        self._provider = provider
        self._intra_op_threads = intra_op_threads
        self._max_queue_size = max_queue_size
        self._load_timeout_s = load_timeout_s
        self._batch_latency_target_s = batch_latency_target_s
        self._observer_for = observer_for
        self._monitoring_window = monitoring_window

    async def build(
        self,
        path: Path,
        name: str,
        version: str,
        config: ModelConfig,
        *,
        on_failure: FailureListener,
    ) -> VersionParts:
        runtime = await self._load(path, name, version, config)
        statistics = VersionStatistics()
        forward = None if self._observer_for is None else self._observer_for(runtime.info)
        # A classifier's predictions and drift (core/monitoring.py), when the observer
        # takes them; `monitoring_window` 0 turns them off.
        candidate: object = forward
        watcher = candidate if isinstance(candidate, MonitoringObserver) else None
        monitor = None
        if watcher is not None:
            profile = path.parent / PROFILE_FILE_NAME
            monitor = monitor_for(runtime.info, watcher, profile, self._monitoring_window)
        tap = BatchTap(monitor, watcher)
        batcher = DynamicBatcher(
            runtime.run,
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.max_queue_delay_s,
            max_queue_size=self._max_queue_size,
            latency_target_s=self._batch_latency_target_s,
            observer=StatisticsObserver(statistics, forward),
            on_failure=on_failure,
            trace_attributes=batch_attributes(runtime.info),
            on_outputs=tap,
        )
        await batcher.start()
        return VersionParts(runtime, batcher, statistics, tap)

    async def _load(self, path: Path, name: str, version: str, config: ModelConfig) -> ModelRuntime:
        """The session, checked and warm, within the load timeout.

        On timeout the thread stuck in ONNX Runtime cannot be stopped: it ends on its own,
        or never, and its session is dropped.
        """
        try:
            async with asyncio.timeout(self._load_timeout_s):
                runtime = await asyncio.to_thread(
                    ModelRuntime.load,
                    path,
                    name=name,
                    version=version,
                    provider=self._provider,
                    intra_op_threads=self._intra_op_threads,
                    cuda_options=config.cuda_provider_options,
                )
                check_contract(runtime.info, config)
                await asyncio.to_thread(runtime.warm_up, config.max_batch_size)
        except TimeoutError:
            raise ModelLoadError(
                f"{path}: loading did not finish within {self._load_timeout_s:g} s "
                "(--model-load-timeout-s); abandoned"
            ) from None
        return runtime
