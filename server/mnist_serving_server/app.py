"""The server's lifecycle: build every part from a ServerConfig, serve, drain, stop.

Start: pick the default model from the repository's folders (an ambiguous or empty
repository fails here), bind the gRPC port (health NOT_SERVING), start `/metrics`; then,
in the background, load and warm up every model of the repository (worker threads), then
health SERVING and the ready file; in poll mode, re-read the repository periodically.
Stop (SIGTERM/SIGINT, or `stop()` in tests): health NOT_SERVING at once, keep serving
for `drain_delay_s` so load balancers notice, then refuse new calls (UNAVAILABLE, through
the drain gate) and give the in-flight ones `grace_period_s` to finish, stop the gRPC
server without cancelling a call (grpc_api/drain_gate.py), stop every batcher, close
`/metrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from mnist_serving_proto import classifier_pb2_grpc, open_inference_pb2_grpc
from mnist_serving_server.config import HTTP_OFF, METRICS_OFF, ServerConfig
from mnist_serving_server.core.dataplane import DataPlane, ModelControlMode
from mnist_serving_server.core.registry import ModelRegistry, ModelState, RegistryOptions
from mnist_serving_server.core.runtime import ModelInfo
from mnist_serving_server.core.tokens import BearerTokens, load_tokens
from mnist_serving_server.grpc_api.auth import AuthConfigError, build_auth_interceptor
from mnist_serving_server.grpc_api.classifier_servicer import ClassifierServicer
from mnist_serving_server.grpc_api.drain_gate import DrainGate
from mnist_serving_server.grpc_api.health import (
    CLASSIFIER_SERVICE,
    HEALTH_SERVICE,
    V2_SERVICE,
    HealthReporter,
    enable_reflection,
)
from mnist_serving_server.grpc_api.message_guard import add_guarded_servicer
from mnist_serving_server.grpc_api.v2_servicer import InferenceV2Servicer
from mnist_serving_server.http_api.asgi import V2HttpApp
from mnist_serving_server.http_api.front import HttpFront
from mnist_serving_server.logs import log_fields
from mnist_serving_server.metrics import MetricsServer, ServerMetrics, start_metrics_server
from mnist_serving_server.peers import PeerLink, WorkerGroup

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Stopping gRPC (drain_gate.py): after the in-flight calls, wait until no new call has
# arrived for QUIET_S (at most QUIET_LIMIT_S), then start server.stop and answer the held
# refusals RELEASE_AFTER_S later, once the GOAWAY is out.
QUIET_S = 0.05
QUIET_LIMIT_S = 1.0
RELEASE_AFTER_S = 0.02

# (add_XServicer_to_server, the servicer, its full service name) for each API served.
ServicerRegistration = tuple[Callable[[Any, aio.Server], None], object, str]


class ServerStartError(Exception):
    """The server could not start (port taken, TLS files unreadable); the message says why."""


def grpc_address(host: str, port: int) -> str:
    """host:port, with IPv6 literals bracketed."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


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


class ServingApp:
    """One server: `await start()`, then `grpc_port` / `metrics_port`, then `await stop()`.

    `warm_up_gate`: when given, warm-up waits for this event (tests use it to observe the
    NOT_SERVING state before warm-up). `registry`: where metrics go (a fresh one by default).
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
        # True only in a --workers process: the port is shared with its siblings on purpose.
        self._reuse_port = reuse_port
        self.models = ModelRegistry(
            config.model_repository,
            RegistryOptions(
                max_batch_size=config.max_batch_size,
                max_queue_delay_s=config.max_queue_delay_s,
                max_queue_size=config.max_queue_size,
                provider=config.provider,
                intra_op_threads=config.intra_op_threads,
                default_model=config.default_model,
                retire_timeout_s=config.grace_period_s,
                load_timeout_s=config.model_load_timeout_s,
                batch_latency_target_s=config.batch_latency_target_s,
            ),
            observer_for=self.metrics.version_observer,
            on_state=self._on_model_state,
        )
        # --workers N: this process is one of N; repository changes reach all of them.
        self._peers = None if group is None else PeerLink(group, self.models)
        self.dataplane = DataPlane(
            self.models, control_mode=config.model_control_mode, replicas=self._peers
        )
        self._poll_task: asyncio.Task[None] | None = None
        self._server: aio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._http: HttpFront | None = None
        self.http_app: V2HttpApp | None = None
        """The HTTP front's ASGI app (None when HTTP is off); kept after stop for tests."""
        self._warm_up_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._grpc_port: int | None = None
        self._gate = DrainGate()
        self._stopping = False
        self._stopped = asyncio.Event()

    # --- what tests and the entry point read ----------------------------------------

    @property
    def grpc_port(self) -> int:
        if self._grpc_port is None:
            raise RuntimeError("the server is not started")
        return self._grpc_port

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
        host = self.config.http_host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        scheme = "https" if self.config.tls_enabled else "http"
        return f"{scheme}://{grpc_address(host, self.http_port or 0)}"

    @property
    def target(self) -> str:
        """Where a client on this machine connects ("127.0.0.1:PORT" for a wildcard host)."""
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        return grpc_address(host, self.grpc_port)

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
        if self._peers is not None:
            await self._peers.start()
        await self.health.start()

        registrations = self._servicers()
        interceptors = self._interceptors([name for _, _, name in registrations])
        server = aio.server(options=self._server_options(), interceptors=interceptors)
        for add_to_server, servicer, _ in registrations:
            # Guarded: a request that is not valid protobuf gets INVALID_ARGUMENT, not UNKNOWN.
            # Gated: once stopping, new calls get UNAVAILABLE (never CANCELLED).
            add_guarded_servicer(
                add_to_server, servicer, server, metrics=self.metrics, gate=self._gate
            )
        self.health.add_to_server(server)
        enable_reflection(server, [name for _, _, name in registrations])
        self._grpc_port = self._bind(server)
        self._server = server
        await server.start()
        if config.http_port != HTTP_OFF:
            await self._start_http()
        if config.metrics_port != METRICS_OFF:
            try:
                self._metrics_server = start_metrics_server(
                    self.registry, config.metrics_host, config.metrics_port
                )
            except OSError as exc:
                raise ServerStartError(
                    f"cannot serve /metrics on "
                    f"{grpc_address(config.metrics_host, config.metrics_port)}: {exc}"
                ) from None
        logger.info(
            "serving (loading models)",
            extra=log_fields(
                model_repository=str(config.model_repository),
                default_model=default_model,
                model_control_mode=config.model_control_mode,
                provider=config.provider,
                grpc_port=self._grpc_port,
                http_port=self.http_port,
                metrics_port=self.metrics_port,
                tls=config.tls_enabled,
                mtls=config.tls_client_ca is not None,
                token_auth=interceptors is not None,
                max_batch_size=config.max_batch_size,
                max_queue_delay_ms=config.max_queue_delay_ms,
                max_queue_size=config.max_queue_size,
            ),
        )

    async def _start_http(self) -> None:
        """KServe V2 over HTTP (and the page) on the same loop, over the same dataplane."""
        config = self.config
        try:
            tokens = load_tokens(config.auth_token_file, os.environ)
        except AuthConfigError as exc:
            raise ServerStartError(str(exc)) from None
        app = V2HttpApp(
            self.dataplane,
            self.metrics,
            ready=lambda: self.ready,
            max_images_per_request=config.max_images_per_request,
            max_decoded_pixels=config.max_decoded_pixels,
            max_body_bytes=config.max_message_bytes,
            tokens=BearerTokens(tokens) if tokens else None,
            health_exempt=HEALTH_SERVICE in config.auth_exempt_services,
        )
        front = HttpFront(
            app,
            config.http_host,
            config.http_port,
            reuse_port=self._reuse_port,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            tls_client_ca=config.tls_client_ca,
        )
        try:
            await front.start()
        except OSError as exc:
            raise ServerStartError(
                f"cannot serve HTTP on {grpc_address(config.http_host, config.http_port)} "
                f"(is another server using it?): {exc}"
            ) from None
        self._http = front
        self.http_app = app

    def _servicers(self) -> list[ServicerRegistration]:
        """Every API this server answers; add a line here to serve another one."""
        config = self.config
        return [
            (
                classifier_pb2_grpc.add_ClassifierServicer_to_server,
                ClassifierServicer(
                    self.dataplane,
                    self.metrics,
                    max_images_per_request=config.max_images_per_request,
                    max_decoded_pixels=config.max_decoded_pixels,
                ),
                CLASSIFIER_SERVICE,
            ),
            (
                open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                InferenceV2Servicer(
                    self.dataplane,
                    self.metrics,
                    max_images_per_request=config.max_images_per_request,
                    max_decoded_pixels=config.max_decoded_pixels,
                ),
                V2_SERVICE,
            ),
        ]

    def _interceptors(self, api_services: list[str]) -> list[aio.ServerInterceptor] | None:
        """Bearer-token auth when a token is configured; None (no interceptor, no cost) if not.

        The tokens are read here, from --auth-token-file and MNIST_SERVING_AUTH_TOKEN, not kept
        in ServerConfig, so they never appear in its repr, the logs or a command line.
        """
        config = self.config
        try:
            auth = build_auth_interceptor(
                config.auth_token_file,
                os.environ,
                exempt_services=config.auth_exempt_services,
                served_services=[*api_services, HEALTH_SERVICE, reflection.SERVICE_NAME],
                metrics=self.metrics,
            )
        except AuthConfigError as exc:
            raise ServerStartError(str(exc)) from None
        if auth is None:
            return None
        if not config.tls_enabled:
            logger.warning(
                "bearer-token auth without TLS: tokens cross the network in clear text; "
                "use --tls-cert/--tls-key unless the network itself is trusted"
            )
        return [auth]

    def _server_options(self) -> list[tuple[str, Any]]:
        limit = self.config.max_message_bytes
        return [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Without this a second server could bind the same port and steal half the
            # connections; with it a port clash fails at start. Workers (--workers N) share
            # the port the parent reserved on purpose (workers.py).
            ("grpc.so_reuseport", 1 if self._reuse_port else 0),
        ]

    def _bind(self, server: aio.Server) -> int:
        config = self.config
        address = grpc_address(config.host, config.port)
        try:
            if config.tls_enabled:
                port = server.add_secure_port(address, self._tls_credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ServerStartError(
                f"cannot bind the gRPC port {address} (is another server using it?): {exc}"
            ) from None
        if port == 0:
            raise ServerStartError(f"cannot bind the gRPC port {address} (in use?)")
        return int(port)

    def _tls_credentials(self) -> grpc.ServerCredentials:
        config = self.config
        assert config.tls_cert is not None
        assert config.tls_key is not None
        try:
            cert = config.tls_cert.read_bytes()
            key = config.tls_key.read_bytes()
            client_ca = None if config.tls_client_ca is None else config.tls_client_ca.read_bytes()
        except OSError as exc:
            raise ServerStartError(f"cannot read a TLS file: {exc}") from None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )

    async def _warm_up(self) -> None:
        """Load and warm every model of the repository, then SERVING."""
        if self._warm_up_gate is not None:
            await self._warm_up_gate.wait()
        await self.models.load_all()
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
            if self._server is not None and drain > 0:
                logger.info("stopping: NOT_SERVING, draining", extra=log_fields(drain_s=drain))
                await asyncio.sleep(drain)
            await self._close()
        finally:
            self._stopped.set()
        logger.info("stopped")

    async def _close(self) -> None:
        """Stop whatever was started, in reverse order; safe on a half-started server."""
        if self._warm_up_task is not None and not self._warm_up_task.done():
            self._warm_up_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._warm_up_task
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll_task
        server, self._server = self._server, None
        http, self._http = self._http, None
        # New calls are refused from here on (HTTP: 503 + Connection: close); calls in
        # flight get the grace period, on both transports at once.
        stopping = []
        if server is not None:
            stopping.append(self._stop_grpc(server))
        if http is not None:
            stopping.append(http.stop(self.config.grace_period_s))
        await asyncio.gather(*stopping)
        self.dataplane.set_ready(False)
        await self.models.stop()
        if self._peers is not None:
            await self._peers.close()
        metrics_server, self._metrics_server = self._metrics_server, None
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.close)
        ready_file = self.config.ready_file
        if ready_file is not None and self._grpc_port is not None:
            with contextlib.suppress(FileNotFoundError):
                ready_file.unlink()

    async def _stop_grpc(self, server: aio.Server) -> None:
        """Refuse new calls, let the in-flight ones finish (within the grace period), stop.

        In an order that cancels no call (drain_gate.py): `server.stop` alone would cancel
        the calls the transport has accepted but no handler has picked up yet.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_period_s
        gate = self._gate
        gate.close()
        if not await gate.wait_idle(deadline - loop.time()):
            logger.warning(
                "grace period over; cancelling the calls still running",
                extra=log_fields(in_flight=gate.in_flight),
            )
        await gate.wait_quiet(QUIET_S, min(QUIET_LIMIT_S, max(deadline - loop.time(), 0.0)))
        stopping = asyncio.ensure_future(server.stop(max(deadline - loop.time(), 0.0)))
        await asyncio.sleep(RELEASE_AFTER_S)
        gate.release()
        await stopping


async def serve(
    config: ServerConfig, *, reuse_port: bool = False, group: WorkerGroup | None = None
) -> None:
    """Run a server until SIGTERM or SIGINT, then drain and stop (the entry point's body)."""
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop_requested.set)
    app = ServingApp(config, reuse_port=reuse_port, group=group)
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
            await stop_requested.wait()
            logger.info("stop signal received")
        finally:
            await app.stop()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
