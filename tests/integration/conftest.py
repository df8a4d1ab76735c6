"""Fixtures for tests against a real in-process server on 127.0.0.1 (free ports).

- `server`: a warm `ServingApp` with the session's model and default limits;
- `channel` / `classifier_stub`: a grpc.aio client of it;
- `start_app`: a factory for servers with other settings (`await start_app(max_queue_size=4)`);
- `runtime_gate`: holds ONNX Runtime calls while closed, to fill the queue on purpose.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import classifier_pb2_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.config import ServerConfig
from mnist_serving_server.core.runtime import ModelRuntime

LOOPBACK = "127.0.0.1"
TEST_GRACE_PERIOD_S = 10.0
# How long a held ONNX Runtime call waits for the test to release it before failing:
# far longer than any test holds it, short enough that a broken test cannot hang the run.
GATE_TIMEOUT_S = 60.0


def app_config(model_repository: Path, **overrides: Any) -> ServerConfig:
    """Loopback, free ports, no drain delay; anything else as given."""
    settings: dict[str, Any] = {
        "model_repository": model_repository,
        "host": LOOPBACK,
        "port": 0,
        "metrics_host": LOOPBACK,
        "metrics_port": 0,
        "http_host": LOOPBACK,
        "http_port": 0,
        "drain_delay_s": 0.0,
        "grace_period_s": TEST_GRACE_PERIOD_S,
    }
    if overrides.get("tls_cert") is None:
        # The native front unless a test says otherwise (`auto` picks it only with tokens
        # and nothing exempt: app.native_wanted); TLS is served by the grpcio front only.
        settings["grpc_front"] = "native"
    settings.update(overrides)
    return ServerConfig(**settings)


class StartApp(Protocol):
    def __call__(
        self,
        *,
        warm_up_gate: asyncio.Event | None = ...,
        wait_ready: bool = ...,
        **overrides: Any,
    ) -> Awaitable[ServingApp]: ...


@pytest.fixture
async def start_app(model_repository: Path, grpc_front: str) -> AsyncIterator[StartApp]:
    """Start servers with custom settings; every one is stopped when the test ends.

    They serve gRPC with the `grpc_front` fixture's front unless a test names another.
    """
    apps: list[ServingApp] = []
    gates: list[asyncio.Event] = []

    async def start(
        *, warm_up_gate: asyncio.Event | None = None, wait_ready: bool = True, **overrides: Any
    ) -> ServingApp:
        if warm_up_gate is not None:
            gates.append(warm_up_gate)
        repository = overrides.pop("model_repository", model_repository)
        if overrides.get("tls_cert") is None:  # TLS is served by the grpcio front only
            overrides.setdefault("grpc_front", grpc_front)
        app = ServingApp(app_config(repository, **overrides), warm_up_gate=warm_up_gate)
        # Kept before starting: a failed warm-up raises from start() with the server up.
        apps.append(app)
        await app.start(wait_ready=wait_ready)
        return app

    yield start
    for gate in gates:
        gate.set()
    for app in reversed(apps):
        await app.stop(drain_delay_s=0)


@pytest.fixture
async def server(start_app: StartApp) -> ServingApp:
    """A warm server with the default limits."""
    return await start_app()


@pytest.fixture
async def channel(server: ServingApp) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(server.target) as open_channel:
        yield open_channel


@pytest.fixture
def classifier_stub(channel: aio.Channel) -> classifier_pb2_grpc.ClassifierAsyncStub:
    return classifier_pb2_grpc.ClassifierStub(channel)


class RuntimeGate:
    """Holds every `ModelRuntime.run` call while closed (a fault the tests cannot cause otherwise:
    a slow model), so that the batcher's queue fills up deterministically."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self.entered = threading.Event()

    def close(self) -> None:
        self.entered.clear()
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def wait_open(self) -> None:
        self.entered.set()
        if not self._open.wait(GATE_TIMEOUT_S):
            raise RuntimeError(f"runtime gate left closed for {GATE_TIMEOUT_S} s")

    async def wait_entered(self) -> None:
        """Until a batch is held inside the runtime."""
        if not await asyncio.to_thread(self.entered.wait, GATE_TIMEOUT_S):
            raise TimeoutError("no batch reached the runtime")


@pytest.fixture
def runtime_gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[RuntimeGate]:
    """Patch ModelRuntime.run (before the app starts) to pass through `gate`."""
    gate = RuntimeGate()
    original_run = ModelRuntime.run

    def gated_run(self: ModelRuntime, pixels: np.ndarray) -> dict[str, np.ndarray]:
        gate.wait_open()
        return original_run(self, pixels)

    monkeypatch.setattr(ModelRuntime, "run", gated_run)
    yield gate
    gate.open()


def queue_depth(app: ServingApp) -> int:
    """Images queued for the default model's latest version."""
    return app.dataplane.model("", "").batcher.queue_depth
