"""A shadow version: a copy of every image the serving version answers, compared, never
answered.

A model's config.pbtxt names it (`parameters { key: "shadow_version" value: {
string_value: "2" } }`, core/model_config.py); the registry checks that the policy loads it
and that another version is left to serve, keeps it out of the "latest" a request without
a version gets, and links the serving version's batches to it (`BatchTap.shadow`) after
every load.

`BatchTap` is what the batcher calls once per ONNX Runtime batch, after the batch's
callers have their answers (core/batcher.py `on_outputs`): it gathers the batches for the
version's monitor (core/monitoring.py) and, for the serving version, for
`ShadowLink.forward`: the gathered images (copies) queued on the shadow's own batcher,
unless the images already waiting for the shadow would pass `limit` (then the copy is
dropped: never a refusal, a wait or a failure for the primary). When the shadow's batch is
done its top-1 labels are compared with the primary's (vectorised) and counted: `agree`,
`disagree`, or `dropped` (queue over the limit, the shadow stopped or failed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Final

import numpy as np

from mnist_serving_server.core.batcher import DynamicBatcher, Outputs
from mnist_serving_server.core.classifier import PROBABILITIES_OUTPUT
from mnist_serving_server.core.errors import ServingError
from mnist_serving_server.core.model_config import (
    SHADOW_VERSION_PARAMETER as SHADOW_VERSION_PARAMETER,
)
from mnist_serving_server.core.monitoring import (
    MonitoringObserver,
    VersionMonitor,
    input_statistic,
)

logger = logging.getLogger(__name__)

SHADOW_QUEUE_BATCHES: Final = 4
"""Images waiting for the shadow: at most this many of its full batches (and never more
than its queue holds), beyond which copies are dropped."""
AGREE: Final = "agree"
DISAGREE: Final = "disagree"
DROPPED: Final = "dropped"
OUTCOMES: Final = (AGREE, DISAGREE, DROPPED)
FLUSH_IMAGES: Final = 64
"""The monitor sees gathered batches once this many images are waiting..."""
FLUSH_DELAY_S: Final = 0.1
"""... or this long after the first of them (so a quiet server's counts are current)."""
_NOTHING = np.zeros(0)


class ShadowLink:
    """The serving version's link to its shadow version's batcher."""

    __slots__ = ("_batcher", "_limit", "_observer", "pending", "version")

    def __init__(
        self,
        version: str,
        batcher: DynamicBatcher,
        observer: MonitoringObserver | None,
        limit: int,
    ) -> None:
        self.version = version
        self._batcher = batcher
        self._observer = observer
        self._limit = max(1, limit)
        self.pending = 0
        """Images handed to the shadow and not yet answered."""

    def forward(self, pixels: np.ndarray, top: np.ndarray) -> None:
        """Queue `pixels` (a copy the shadow may keep; the primary's top-1 labels `top`)."""
        rows = len(top)
        if self.pending + rows > self._limit or not self._batcher.running:
            self._count(DROPPED, rows)
            return
        try:
            future = self._batcher.enqueue(pixels)
        except ServingError:
            self._count(DROPPED, rows)
            return
        self.pending += rows
        future.add_done_callback(lambda done: self._compare(done, top))

    def _compare(self, done: asyncio.Future[Outputs], top: np.ndarray) -> None:
        rows = len(top)
        self.pending -= rows
        if done.cancelled() or done.exception() is not None:
            self._count(DROPPED, rows)
            return
        probabilities = done.result().get(PROBABILITIES_OUTPUT)
        if probabilities is None or probabilities.ndim != 2:
            self._count(DROPPED, rows)
            return
        agree = int(np.count_nonzero(probabilities.argmax(axis=1) == top))
        self._count(AGREE, agree)
        self._count(DISAGREE, rows - agree)

    def _count(self, outcome: str, images: int) -> None:
        if images and self._observer is not None:
            try:
                self._observer.on_shadow(self.version, outcome, images)
            except Exception:
                logger.exception("shadow observer failed")


class BatchTap:
    """What one version's batcher calls with each batch's inputs and outputs.

    A batch is only noted here (its probabilities, each image's input statistic and, while
    the version has a shadow, a copy of its images: a few microseconds); the monitor and the
    shadow see the gathered batches at once, when FLUSH_IMAGES have gathered or
    FLUSH_DELAY_S after the first (a timer on the event loop). So the monitor's numpy work
    and metric updates cost per 64 images, not per batch, and the shadow runs batches of
    up to 64 images, whatever the size of the primary's.
    """

    __slots__ = ("_pending", "_rows", "_timer", "monitor", "observer", "shadow")

    def __init__(self, monitor: VersionMonitor | None, observer: MonitoringObserver | None) -> None:
        self.monitor = monitor
        self.observer = observer
        self.shadow: ShadowLink | None = None
        """Set by the registry on the model's serving version while it has a shadow."""
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, pixels: np.ndarray, outputs: Mapping[str, np.ndarray]) -> None:
        shadow = self.shadow
        monitor = self.monitor
        if monitor is None and shadow is None:
            return
        probabilities = outputs.get(PROBABILITIES_OUTPUT)
        if probabilities is None or probabilities.ndim != 2:
            return
        # Computed or copied now: the batch's pixels may be a caller's buffer, not kept.
        drift = monitor is not None and monitor.drift
        statistic = input_statistic(pixels) if drift else _NOTHING
        copy = None if shadow is None else np.array(pixels, copy=True)
        # A copy too: ONNX Runtime's output may hold memory of the version's session, which a
        # load/unload cycle would otherwise free only after the next session is made (the
        # heap then grew by a session per cycle: tests/integration/repository).
        probabilities = np.array(probabilities, copy=True)
        self._pending.append((statistic, probabilities, copy))
        self._rows += len(probabilities)
        if self._rows >= FLUSH_IMAGES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY_S, self.flush)

    def flush(self) -> None:
        """Hand the gathered batches to the monitor and the shadow now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._rows = self._pending, [], 0
        if not pending:
            return
        if len(pending) == 1:
            statistic, probabilities, _ = pending[0]
        else:
            statistic = np.concatenate([part[0] for part in pending])
            probabilities = np.concatenate([part[1] for part in pending])
        try:
            if self.monitor is not None:
                top = self.monitor.observe_statistic(statistic, probabilities)
            else:
                top = probabilities.argmax(axis=1)
            self._forward(pending, top)
        except Exception:
            logger.exception("model monitoring failed")

    def _forward(
        self, pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], top: np.ndarray
    ) -> None:
        """The copies gathered while the shadow was linked, to the shadow linked now."""
        shadow = self.shadow
        if shadow is None:
            return
        copies: list[np.ndarray] = []
        tops: list[np.ndarray] = []
        start = 0
        for _, probabilities, copy in pending:
            end = start + len(probabilities)
            if copy is not None:
                copies.append(copy)
                tops.append(top[start:end])
            start = end
        if len(copies) == 1:
            shadow.forward(copies[0], tops[0])
        elif copies:
            shadow.forward(np.concatenate(copies), np.concatenate(tops))
