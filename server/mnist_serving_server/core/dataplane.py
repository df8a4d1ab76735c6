"""What both servicers (Classify and KServe V2) call: readiness, model check, inference."""

from __future__ import annotations

import numpy as np

from mnist_serving_server.core.batcher import DynamicBatcher
from mnist_serving_server.core.errors import ModelNotFoundError, NotReadyError
from mnist_serving_server.core.runtime import ModelInfo, ModelRuntime

# An empty model name or version in a request means "the default model, latest version".
DEFAULT_SELECTOR = ""


class InferenceService:
    """The served model behind one batcher, shared by every servicer."""

    def __init__(self, runtime: ModelRuntime, batcher: DynamicBatcher) -> None:
        self._runtime = runtime
        self._batcher = batcher
        self._ready = False

    @property
    def info(self) -> ModelInfo:
        return self._runtime.info

    @property
    def batcher(self) -> DynamicBatcher:
        return self._batcher

    @property
    def ready(self) -> bool:
        """Warm and accepting work: set_ready(True) was called and the batch loop is alive."""
        return self._ready and self._batcher.running

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def check_model(self, model_name: str, model_version: str) -> None:
        """Raise ModelNotFoundError unless the request names the served model ("" = default)."""
        info = self._runtime.info
        if model_name not in (DEFAULT_SELECTOR, info.name):
            raise ModelNotFoundError(f"model {model_name!r} is not served; {_available(info)}")
        if model_version not in (DEFAULT_SELECTOR, info.version):
            raise ModelNotFoundError(
                f"version {model_version!r} of model {info.name!r} is not served; "
                f"{_available(info)}"
            )

    async def infer(self, pixels: np.ndarray, *, deadline: float | None) -> dict[str, np.ndarray]:
        """All model outputs for `pixels` (uint8 [n,1,28,28]); `deadline` is time.monotonic()."""
        if not self.ready:
            raise NotReadyError("the server is not ready: warming up or shutting down")
        return await self._batcher.submit(pixels, deadline=deadline)


def _available(info: ModelInfo) -> str:
    """Built only for an error message: check_model runs on every request."""
    return f"available: {info.name} (versions {info.version})"
