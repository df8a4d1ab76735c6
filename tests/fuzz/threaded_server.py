"""A real in-process server running on its own event loop in a background thread.

Hypothesis drives synchronous test functions (one server for thousands of examples; an
async fixture per example would restart the server each time), so the grpc.aio server
lives on a private loop in a daemon thread and the tests call it with a blocking channel.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from mnist_serving_server.app import ServingApp
from tests.integration.conftest import app_config

T = TypeVar("T")
# Bounds on starting (load + warm-up on a busy 2-core machine) and stopping the server.
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 30.0


class ThreadedServer:
    """`with ThreadedServer(repo, max_queue_size=...) as server:` then `server.target`."""

    def __init__(self, model_repository: Path, **overrides: Any) -> None:
        self._config = app_config(model_repository, **overrides)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fuzz-server-loop", daemon=True
        )
        self._app: ServingApp | None = None

    @property
    def app(self) -> ServingApp:
        if self._app is None:
            raise RuntimeError("the server is not started")
        return self._app

    @property
    def target(self) -> str:
        return self.app.target

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT_S) -> T:
        """Run `coroutine` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()

        async def start() -> ServingApp:
            app = ServingApp(self._config)
            await app.start()
            return app

        self._app = self.run(start(), START_TIMEOUT_S)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if self._app is not None:
                self.run(self._app.stop(drain_delay_s=0), STOP_TIMEOUT_S)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(STOP_TIMEOUT_S)
            self._loop.close()
