"""How long the batcher waits for a batch to fill: a fixed delay, or one adapted to a target.

Fixed (no latency target): `delay_s` is `max_queue_delay_s` for good (0: never wait).

Adaptive (`latency_target_s` > 0): the delay starts at 0 and grows, step by step up to a
quarter of the target, while concurrent callers fill the batches and requests spend less
than the target in the batcher; it halves when they spend more, or when a wait brought no
new image (light load). Bigger batches mean fewer hand-offs to the worker thread and fewer
ONNX Runtime calls per request (docs/performance.md, issue #13: less CPU per request, not
a lower p99).

The batcher reads `delay_s` before each batch and, when `adaptive`, calls `adapt` once per
batch answered: nothing here runs per request.
"""

from __future__ import annotations

# Adaptive queue delay: steps of target / DELAY_STEPS, at most target x DELAY_CAP_SHARE.
DELAY_STEPS = 50
DELAY_CAP_SHARE = 0.25


class QueueDelay:
    """The batcher's queue delay policy: fixed, or adaptive to `latency_target_s`."""

    __slots__ = ("_cap_s", "_step_s", "_target_s", "adaptive", "delay_s")

    def __init__(self, max_queue_delay_s: float, latency_target_s: float) -> None:
        if max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s}")
        if latency_target_s < 0:
            raise ValueError(f"latency_target_s must be >= 0, got {latency_target_s}")
        self.adaptive = latency_target_s > 0
        # How long the batcher now waits for a batch to fill, at most.
        self.delay_s = 0.0 if self.adaptive else max_queue_delay_s
        self._target_s = latency_target_s
        self._step_s = latency_target_s / DELAY_STEPS
        self._cap_s = latency_target_s * DELAY_CAP_SHARE

    def adapt(self, worst_s: float, rows: int, requests: int, waited_from: int) -> None:
        """Grow the delay while it fills batches within the target; shrink it if not.

        `worst_s`: how long the oldest request of the batch just answered spent in the
        batcher (queued + computed); `rows` and `requests`: the batch's images and calls;
        `waited_from`: the images queued when a wait for this batch began (-1: no wait).
        Over the target, or a wait that brought no image (light load): halve the delay (0
        below one step). Otherwise, a wait that brought images, or a batch of several
        requests (concurrent callers): one step longer, up to the cap.
        """
        delay = self.delay_s
        if worst_s > self._target_s or (waited_from >= 0 and rows <= waited_from):
            delay *= 0.5
            if delay < self._step_s:
                delay = 0.0
        elif waited_from >= 0 or requests > 1:
            delay = min(delay + self._step_s, self._cap_s)
        self.delay_s = delay
