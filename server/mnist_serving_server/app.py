"""The server's lifecycle: build every part from a ServerConfig, serve, drain, stop.

Start: pick the default model from the repository's folders (an ambiguous or empty
repository fails here), start the gRPC front (health NOT_SERVING) and the HTTP front, then
`/metrics`; then, in the background, load and warm up every model of the repository
(worker threads), then health SERVING and the ready file; in poll mode, re-read the
repository periodically. Tracing (telemetry.py), when on, is set up first, so that the
first call is traced.
Stop (SIGTERM/SIGINT, or `stop()` in tests): health NOT_SERVING at once, keep serving
for `drain_delay_s` so load balancers notice, then both fronts refuse new calls and give
the in-flight ones `grace_period_s` to finish, cancelling none (core/drain.py); then every
batcher stops, `/metrics` closes and the spans still queued are exported (a few seconds
at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from mnist_serving_server.config import HTTP_OFF, METRICS_OFF, ServerConfig
from mnist_serving_server.core.dataplane import DataPlane, ModelControlMode
from mnist_serving_server.core.inference import RequestLimits
from mnist_serving_server.core.registry import ModelRegistry, ModelState, RegistryOptions
from mnist_serving_server.core.runtime import ModelInfo
from mnist_serving_server.core.tokens import AuthConfigError, BearerTokens, load_tokens
from mnist_serving_server.grpc_api.front import GrpcFront, GrpcStartError, grpc_address
from mnist_serving_server.grpc_api.health import HEALTH_SERVICE, HealthReporter
from mnist_serving_server.grpc_api.native_front import (
    NATIVE_FRONT_AVAILABLE,
    UNBOUNDED_NATIVE_RECEIVE,
    NativeFront,
    private_socket_dir,
    receive_bounded,
)
from mnist_serving_server.grpc_api.native_front import (
    SOCKET_NAME as NATIVE_SOCKET_NAME,
)
from mnist_serving_server.http_api.asgi import V2HttpApp
from mnist_serving_server.http_api.front import HttpFront
from mnist_serving_server.logs import log_fields
from mnist_serving_server.memory import MemoryTrimmer
from mnist_serving_server.metrics import MetricsServer, ServerMetrics, start_metrics_server
from mnist_serving_server.peers import PeerLink, WorkerGroup
from mnist_serving_server.telemetry import Telemetry, TelemetryConfigError, start_tracing

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ServerStartError(Exception):
    """The server could not start (port taken, TLS files unreadable); the message says why."""


def write_ready_file(
    path: Path, grpc_port: int, metrics_port: int | None, http_port: int | None = None
) -> None:
    """Write the ready file atomically (tmp + rename), so a reader never sees half of it."""
    content = json.dumps(
        {
            "grpc_port": grpc_port,
            "http_port": http_port,
            "metrics_port": metrics_port,
            "pid": os.getpid(),
        }
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content + "\n", encoding="utf-8")
    os.replace(tmp, path)


def registry_options(config: ServerConfig) -> RegistryOptions:
    """The registry's settings from the server's."""
    return RegistryOptions(
        max_batch_size=config.max_batch_size,
        max_queue_delay_s=config.max_queue_delay_s,
        max_queue_size=config.max_queue_size,
        provider=config.provider,
        intra_op_threads=config.intra_op_threads,
        default_model=config.default_model,
        retire_timeout_s=config.grace_period_s,
        load_timeout_s=config.model_load_timeout_s,
        batch_latency_target_s=config.batch_latency_target_s,
        monitoring_window=config.drift_window,
    )


def grpc_front(
    config: ServerConfig,
    dataplane: DataPlane,
    metrics: ServerMetrics,
    health: HealthReporter,
    *,
    reuse_port: bool,
    unix_socket: Path | None = None,
) -> GrpcFront:
    """The gRPC front for these settings; it reads the auth tokens when it starts."""
    return GrpcFront(
        dataplane,
        metrics,
        health,
        config.host,
        config.port,
        max_message_bytes=config.max_message_bytes,
        max_images_per_request=config.max_images_per_request,
        max_decoded_pixels=config.max_decoded_pixels,
        reuse_port=reuse_port,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        tls_client_ca=config.tls_client_ca,
        auth_token_file=config.auth_token_file,
        auth_exempt_services=config.auth_exempt_services,
        environ=os.environ,
        unix_socket=unix_socket,
    )


def native_wanted(config: ServerConfig, tokens: tuple[str, ...]) -> bool:
    """Whether --grpc-front picks the native front.

    pygrpc-native (0.5) holds a whole message before Python sees its size, so the native
    front's receive is bounded only for callers it authenticates at their headers: bearer
    tokens on and no service exempt (`receive_bounded`). `auto` picks it then, and grpcio
    otherwise (grpc-core refuses a message over the limit at its length prefix);
    `native` is the operator's word that every client is trusted (or that a proxy bounds
    requests), said back as a warning when the receive is unbounded.
    """
    if config.grpc_front == "grpcio":
        return False
    if config.tls_enabled:
        if config.grpc_front == "native":
            raise ServerStartError(
                "--grpc-front native does not serve TLS; use --grpc-front auto or grpcio"
            )
        return False
    if not NATIVE_FRONT_AVAILABLE:
        if config.grpc_front == "native":
            raise ServerStartError("--grpc-front native: pygrpc-native cannot be imported")
        logger.warning("pygrpc-native cannot be imported: serving gRPC with grpcio")
        return False
    bounded = receive_bounded(tokens, config.auth_exempt_services)
    if config.grpc_front == "auto":
        if not bounded:
            logger.info(UNBOUNDED_NATIVE_RECEIVE + "; serving gRPC with grpcio")
        return bounded
    if not bounded:
        logger.warning(UNBOUNDED_NATIVE_RECEIVE + "; serve it only to trusted clients")
    return True


def native_front(
    config: ServerConfig,
    dataplane: DataPlane,
    metrics: ServerMetrics,
    health: HealthReporter,
    *,
    tokens: tuple[str, ...],
    reuse_port: bool,
) -> NativeFront:
    """The native front on host:port, with the grpc.aio front behind it on a Unix socket."""
    socket_dir = private_socket_dir()
    fallback = grpc_front(
        config,
        dataplane,
        metrics,
        health,
        reuse_port=False,
        unix_socket=socket_dir / NATIVE_SOCKET_NAME,
    )
    return NativeFront(
        dataplane,
        metrics,
        fallback,
        config.host,
        config.port,
        socket_dir=socket_dir,
        max_message_bytes=config.max_message_bytes,
        limits=RequestLimits(config.max_images_per_request, config.max_decoded_pixels),
        tokens=tokens,
        reuse_port=reuse_port,
    )


def http_front(
    config: ServerConfig,
    dataplane: DataPlane,
    metrics: ServerMetrics,
    ready: Callable[[], bool],
    *,
    reuse_port: bool,
) -> HttpFront:
    """The HTTP front (KServe V2 and the page) for these settings; reads the auth tokens.

    The tokens are read from --auth-token-file and MNIST_SERVING_AUTH_TOKEN, not kept in
    ServerConfig, so they never appear in its repr, the logs or a command line.
    """
    try:
        tokens = load_tokens(config.auth_token_file, os.environ)
    except AuthConfigError as exc:
        raise ServerStartError(str(exc)) from None
    app = V2HttpApp(
        dataplane,
        metrics,
        ready=ready,
        max_images_per_request=config.max_images_per_request,
        max_decoded_pixels=config.max_decoded_pixels,
        max_body_bytes=config.max_message_bytes,
        tokens=BearerTokens(tokens) if tokens else None,
        health_exempt=HEALTH_SERVICE in config.auth_exempt_services,
    )
    return HttpFront(
        app,
        config.http_host,
        config.http_port,
        reuse_port=reuse_port,
        tls_cert=config.tls_cert,
        tls_key=config.tls_key,
        tls_client_ca=config.tls_client_ca,
        request_timeout_s=config.http_request_timeout_s,
    )


def metrics_server(config: ServerConfig, registry: CollectorRegistry) -> MetricsServer:
    """`/metrics` on its own port, serving `registry`."""
    try:
        return start_metrics_server(registry, config.metrics_host, config.metrics_port)
    except OSError as exc:
        raise ServerStartError(
            f"cannot serve /metrics on "
            f"{grpc_address(config.metrics_host, config.metrics_port)}: {exc}"
        ) from None


def log_serving(
    config: ServerConfig,
    default_model: str,
    *,
    token_auth: bool,
    grpc_port: int,
    http_port: int | None,
    metrics_port: int | None,
    tracing: bool = False,
) -> None:
    """The one line that says what this server is and how it was started."""
    logger.info(
        "serving (loading models)",
        extra=log_fields(
            model_repository=str(config.model_repository),
            default_model=default_model,
            model_control_mode=config.model_control_mode,
            provider=config.provider,
            grpc_port=grpc_port,
            http_port=http_port,
            metrics_port=metrics_port,
            tls=config.tls_enabled,
            mtls=config.tls_client_ca is not None,
            token_auth=token_auth,
            tracing=tracing,
            max_batch_size=config.max_batch_size,
            max_queue_delay_ms=config.max_queue_delay_ms,
            max_queue_size=config.max_queue_size,
        ),
    )


def local_address(host: str, port: int) -> str:
    """Where a client on this machine reaches host:port ("127.0.0.1:PORT" for a wildcard)."""
    return grpc_address("127.0.0.1" if host in ("0.0.0.0", "::", "") else host, port)


class ServingApp:
    """One server: `await start()`, then `grpc_port` / `metrics_port`, then `await stop()`.

    `warm_up_gate`: when given, warm-up waits for this event (tests use it to observe the
    NOT_SERVING state before warm-up). `registry`: where metrics go (a fresh one by default).
    `reuse_port`: True only in a --workers process, whose ports are shared with its
    siblings on purpose; `group`: those siblings.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        registry: CollectorRegistry | None = None,
        warm_up_gate: asyncio.Event | None = None,
        reuse_port: bool = False,
        group: WorkerGroup | None = None,
    ) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServerMetrics(
            self.registry,
            max_batch_size=config.max_batch_size,
            max_queue_size=config.max_queue_size,
        )
        self.health = HealthReporter()
        self._warm_up_gate = warm_up_gate
        self._reuse_port = reuse_port
        self.models = ModelRegistry(
            config.model_repository,
            registry_options(config),
            observer_for=self.metrics.version_observer,
            on_state=self._on_model_state,
        )
        # --workers N: this process is one of N; repository changes reach all of them.
        self._peers = None if group is None else PeerLink(group, self.models)
        self._rejoining = group is not None and group.rejoining
        self._models_loaded = False
        self.dataplane = DataPlane(
            self.models, control_mode=config.model_control_mode, replicas=self._peers
        )
        self._grpc: GrpcFront | NativeFront | None = None
        self._http: HttpFront | None = None
        self.http_app: V2HttpApp | None = None
        """The HTTP front's ASGI app (None when HTTP is off); kept after stop for tests."""
        self._metrics_server: MetricsServer | None = None
        self._telemetry: Telemetry | None = None
        self._warm_up_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._stopped = asyncio.Event()

    # --- what tests and the entry point read ----------------------------------------

    @property
    def grpc_port(self) -> int:
        if self._grpc is None or self._grpc.port is None:
            raise RuntimeError("the server is not started")
        return self._grpc.port

    @property
    def metrics_port(self) -> int | None:
        """The bound /metrics port, None when the metrics server is off."""
        return None if self._metrics_server is None else self._metrics_server.port

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port, None when HTTP is off."""
        return None if self._http is None else self._http.port

    @property
    def http_base(self) -> str:
        """Where a client on this machine reaches HTTP ("http://127.0.0.1:PORT")."""
        scheme = "https" if self.config.tls_enabled else "http"
        return f"{scheme}://{local_address(self.config.http_host, self.http_port or 0)}"

    @property
    def target(self) -> str:
        """Where a client on this machine connects ("127.0.0.1:PORT" for a wildcard host)."""
        return local_address(self.config.host, self.grpc_port)

    @property
    def ready(self) -> bool:
        return self.health.serving and self.dataplane.ready

    # --- lifecycle --------------------------------------------------------------------

    async def start(self, *, wait_ready: bool = True) -> None:
        """Load, bind and serve; then warm up (awaited unless wait_ready=False).

        Raises ModelLoadError (model missing or broken) or ServerStartError (bind, TLS);
        either way nothing it started is left running.
        """
        try:
            if self._rejoining:
                # A replacement worker: its siblings serve meanwhile, so it binds the shared
                # ports only once warm, and no caller meets it warming up.
                await self._start_peers()
                await self._load_models()
            await self._start_serving()
        except BaseException:
            await self._close()
            raise
        self._warm_up_task = asyncio.create_task(self._warm_up(), name="mnist-warm-up")
        if wait_ready:
            try:
                await self.wait_ready()
            except BaseException:
                await self.stop(drain_delay_s=0)  # a failed warm-up: stop what is serving
                raise

    async def wait_ready(self) -> None:
        """Until warm-up is done (re-raises its failure)."""
        if self._warm_up_task is None:
            raise RuntimeError("the server is not started")
        await asyncio.shield(self._warm_up_task)

    async def _start_serving(self) -> None:
        config = self.config
        default_model = self.models.resolve_default_model()
        try:
            self._telemetry = start_tracing(config.tracing, os.environ)
        except TelemetryConfigError as exc:
            raise ServerStartError(str(exc)) from None
        await self._start_peers()
        await self.health.start()
        grpc_front = await self._start_grpc()
        if config.http_port != HTTP_OFF:
            await self._start_http()
        if config.metrics_port != METRICS_OFF:
            self._metrics_server = metrics_server(config, self.registry)
        log_serving(
            config,
            default_model,
            token_auth=grpc_front.token_auth,
            grpc_port=self.grpc_port,
            http_port=self.http_port,
            metrics_port=self.metrics_port,
            tracing=self._telemetry is not None,
        )

    async def _start_peers(self) -> None:
        if self._peers is not None and not self._peers.serving:
            await self._peers.start()

    async def _load_models(self) -> None:
        """Every model of the repository, then (a replacement worker) its siblings' state."""
        if self._models_loaded:
            return
        await self.models.load_all()
        if self._peers is not None:
            await self._peers.join()
        self._models_loaded = True

    async def _start_grpc(self) -> GrpcFront | NativeFront:
        """Classify, KServe V2, health and reflection (--grpc-front)."""
        config = self.config
        try:
            tokens = load_tokens(config.auth_token_file, os.environ)
        except AuthConfigError as exc:
            raise ServerStartError(str(exc)) from None
        front: GrpcFront | NativeFront
        if native_wanted(config, tokens):
            front = native_front(
                config,
                self.dataplane,
                self.metrics,
                self.health,
                tokens=tokens,
                reuse_port=self._reuse_port,
            )
        else:
            front = grpc_front(
                config, self.dataplane, self.metrics, self.health, reuse_port=self._reuse_port
            )
        self._grpc = front
        try:
            await front.start()
        except GrpcStartError as exc:
            raise ServerStartError(str(exc)) from None
        return front

    async def _start_http(self) -> None:
        """KServe V2 over HTTP (and the page) on the same loop, over the same dataplane."""
        config = self.config
        front = http_front(
            config, self.dataplane, self.metrics, lambda: self.ready, reuse_port=self._reuse_port
        )
        try:
            await front.start()
        except OSError as exc:
            raise ServerStartError(
                f"cannot serve HTTP on {grpc_address(config.http_host, config.http_port)} "
                f"(is another server using it?): {exc}"
            ) from None
        self._http = front
        self.http_app = front.app

    async def _warm_up(self) -> None:
        """Load and warm every model of the repository, then SERVING."""
        if self._warm_up_gate is not None:
            await self._warm_up_gate.wait()
        await self._load_models()
        if self._stopping:
            return
        self.dataplane.set_ready(True)
        await self.health.set_serving()
        if self.config.ready_file is not None:
            write_ready_file(
                self.config.ready_file, self.grpc_port, self.metrics_port, self.http_port
            )
        polls = self._peers is None or self._peers.group.leader  # the leader polls for all
        if self.dataplane.control_mode is ModelControlMode.POLL and polls:
            self._poll_task = asyncio.create_task(self._poll_repository(), name="mnist-poll")
        logger.info(
            "ready",
            extra=log_fields(
                grpc_port=self.grpc_port, http_port=self.http_port, metrics_port=self.metrics_port
            ),
        )

    async def _poll_repository(self) -> None:
        """Poll mode: apply what changed in the repository folder every poll interval."""
        while not self._stopping:
            await asyncio.sleep(self.config.repository_poll_secs)
            try:
                await self.dataplane.replicas.poll()
            except Exception:  # a bug must not end polling for good
                logger.exception("repository poll failed")

    def _on_model_state(
        self, model: str, version: str, state: ModelState, info: ModelInfo | None
    ) -> None:
        """Metrics follow every state; health follows whether anything can be served."""
        self.metrics.on_model_state(model, version, state.value, info)
        if self._stopping or not self.dataplane.accepting:
            return
        serving = self.models.any_ready
        if serving != self.health.serving:
            if not serving:
                logger.error("no model version can serve; reporting NOT_SERVING")
            update = self.health.set_serving() if serving else self.health.set_not_serving()
            task = asyncio.get_running_loop().create_task(update)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def stop(self, *, drain_delay_s: float | None = None) -> None:
        """Drain and stop (idempotent; a second caller waits for the first)."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        drain = self.config.drain_delay_s if drain_delay_s is None else drain_delay_s
        try:
            await self.health.set_not_serving_for_good()
            if self._grpc is not None and self._grpc.serving and drain > 0:
                logger.info("stopping: NOT_SERVING, draining", extra=log_fields(drain_s=drain))
                await asyncio.sleep(drain)
            await self._close()
        finally:
            self._stopped.set()
        logger.info("stopped")

    async def _close(self) -> None:
        """Stop whatever was started, in reverse order; safe on a half-started server."""
        for task in (self._warm_up_task, self._poll_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        http, self._http = self._http, None
        # New calls are refused from here on (gRPC: UNAVAILABLE; HTTP: 503 + Connection:
        # close); calls in flight get the grace period, on both fronts at once.
        grace = self.config.grace_period_s
        fronts = [front for front in (self._grpc, http) if front is not None]
        await asyncio.gather(*(front.stop(grace) for front in fronts))
        self.dataplane.set_ready(False)
        await self.models.stop()
        if self._peers is not None:
            await self._peers.close()
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.close)
        ready_file = self.config.ready_file
        if ready_file is not None and self._grpc is not None and self._grpc.port is not None:
            with contextlib.suppress(FileNotFoundError):
                ready_file.unlink()
        telemetry, self._telemetry = self._telemetry, None
        if telemetry is not None:  # last: the spans of the calls just drained go out too
            await asyncio.to_thread(telemetry.shutdown)


async def serve(
    config: ServerConfig, *, reuse_port: bool = False, group: WorkerGroup | None = None
) -> None:
    """Run a server until SIGTERM or SIGINT, then drain and stop (the entry point's body)."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop_requested.set)
    app = ServingApp(config, reuse_port=reuse_port, group=group)
    trimmer = MemoryTrimmer()  # memory a burst took goes back to the system (memory.py)
    try:
        await app.start(wait_ready=False)  # on failure it has cleaned up after itself
        try:
            ready_or_stop = [
                asyncio.ensure_future(app.wait_ready()),
                asyncio.ensure_future(stop_requested.wait()),
            ]
            done, pending = await asyncio.wait(ready_or_stop, return_when=asyncio.FIRST_COMPLETED)
            for future in pending:
                future.cancel()
            for future in done:
                future.result()  # a failed warm-up ends the process with its error
            trimmer.start()
            if app.ready:
                # Everything loaded so far (modules, the model, its session) lives as long as
                # the process: out of the collector's sight, the generation-2 collections that
                # every few thousand calls' objects trigger no longer scan it all
                # (docs/performance.md: 8% of the profiled samples before).
                gc.freeze()
            await stop_requested.wait()
            logger.info("stop signal received")
        finally:
            await trimmer.stop()
            await app.stop()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
