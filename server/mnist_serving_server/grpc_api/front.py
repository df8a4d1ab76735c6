"""The gRPC server: every API servicer, health and reflection on one grpc.aio server.

`GrpcFront.start()` builds the server (guarded servicers, bearer-token auth when a token is
configured, the message size limits), binds host:port (TLS or mTLS when configured;
SO_REUSEPORT only for `--workers`, whose processes share the port on purpose) and starts
it. `stop(grace)` drains through the DrainGate so that no call is cancelled
(grpc_api/drain_gate.py, in the phases of core/drain.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import grpc
from grpc import aio
from grpc_reflection.v1alpha import reflection

from mnist_serving_proto import classifier_pb2_grpc, open_inference_pb2_grpc
from mnist_serving_server.core.dataplane import DataPlane
from mnist_serving_server.core.drain import wait_quiet
from mnist_serving_server.core.tokens import AuthConfigError
from mnist_serving_server.grpc_api.auth import build_auth_interceptor
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
from mnist_serving_server.logs import log_fields
from mnist_serving_server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

RELEASE_AFTER_S: Final = 0.02
"""Once server.stop has started, the held refusals are answered this much later: by then the
GOAWAY is out, so the callers' next calls fail on the client side (drain_gate.py, step 5)."""

# (add_XServicer_to_server, the servicer, its full service name) for each API served.
ServicerRegistration = tuple[Callable[[Any, aio.Server], None], object, str]


class GrpcStartError(Exception):
    """The gRPC server could not start (port taken, TLS files unreadable, auth settings)."""


def grpc_address(host: str, port: int) -> str:
    """host:port, with IPv6 literals bracketed."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class GrpcFront:
    """One grpc.aio server for the dataplane on host:port; `port` is the bound port once started.

    `health` is the app's: its servicer is served here, its status is the app's to set.
    The auth tokens are read at `start()`, from `auth_token_file` and `environ`, not kept
    in any settings object, so they never appear in a repr, the logs or a command line.
    """

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: ServerMetrics,
        health: HealthReporter,
        host: str,
        port: int,
        *,
        max_message_bytes: int,
        max_images_per_request: int,
        max_decoded_pixels: int,
        reuse_port: bool = False,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        tls_client_ca: Path | None = None,
        auth_token_file: Path | None = None,
        auth_exempt_services: Sequence[str] = (),
        environ: Mapping[str, str],
        unix_socket: Path | None = None,
    ) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._health = health
        # Behind the native front (grpc_api/native_front.py), on a Unix socket of its own.
        self._address = grpc_address(host, port) if unix_socket is None else f"unix:{unix_socket}"
        self._max_message_bytes = max_message_bytes
        self._max_images = max_images_per_request
        self._max_decoded_pixels = max_decoded_pixels
        self._reuse_port = reuse_port
        self._tls_cert = tls_cert
        self._tls_key = tls_key
        self._tls_client_ca = tls_client_ca
        self._auth_token_file = auth_token_file
        self._auth_exempt_services = tuple(auth_exempt_services)
        self._environ = environ
        self.gate = DrainGate()
        """Admits the calls; closed by `stop()` (tests close it by hand)."""
        self.token_auth = False
        """Whether bearer-token auth is on (known once started)."""
        self.port: int | None = None
        self._server: aio.Server | None = None

    @property
    def serving(self) -> bool:
        """Bound, and `stop()` has not begun."""
        return self._server is not None

    @property
    def auth_exempt_services(self) -> tuple[str, ...]:
        """The services bearer-token auth leaves open (for a front that answers some of
        this server's methods itself: the native front)."""
        return self._auth_exempt_services

    async def start(self) -> None:
        """Build, bind and start the server; GrpcStartError says why it could not."""
        registrations = self._servicers()
        served = [name for _, _, name in registrations]
        interceptors = self._interceptors(served)
        options = self._server_options()
        server = aio.server(options=options, interceptors=interceptors)
        for add_to_server, servicer, _ in registrations:
            # Guarded: a request that is not valid protobuf gets INVALID_ARGUMENT, not UNKNOWN.
            # Gated: once stopping, new calls get UNAVAILABLE (never CANCELLED).
            add_guarded_servicer(
                add_to_server, servicer, server, metrics=self._metrics, gate=self.gate
            )
        self._health.add_to_server(server)
        enable_reflection(server, served)
        self.port = self._bind(server)
        self._server = server  # bound: stop() must close it, even if starting fails
        await server.start()

    async def stop(self, grace_period_s: float) -> None:
        """Refuse new calls, let the in-flight ones finish (within the grace period), stop.

        In an order that cancels no call (drain_gate.py): `server.stop` alone would cancel
        the calls the transport has accepted but no handler has picked up yet.
        """
        server, self._server = self._server, None
        if server is None:
            return
        loop = asyncio.get_running_loop()
        give_up = loop.time() + grace_period_s
        gate = self.gate
        gate.close()
        if not await gate.wait_idle(give_up - loop.time()):
            logger.warning(
                "grace period over; cancelling the calls still running",
                extra=log_fields(in_flight=gate.in_flight),
            )
        await wait_quiet(gate.last_arrival, give_up)
        stopping = asyncio.ensure_future(server.stop(max(give_up - loop.time(), 0.0)))
        await asyncio.sleep(RELEASE_AFTER_S)
        gate.release()
        await stopping

    def _servicers(self) -> list[ServicerRegistration]:
        """Every API this server answers; add a line here to serve another one."""
        dataplane, metrics = self._dataplane, self._metrics
        max_images, max_pixels = self._max_images, self._max_decoded_pixels
        return [
            (
                classifier_pb2_grpc.add_ClassifierServicer_to_server,
                ClassifierServicer(
                    dataplane,
                    metrics,
                    max_images_per_request=max_images,
                    max_decoded_pixels=max_pixels,
                ),
                CLASSIFIER_SERVICE,
            ),
            (
                open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server,
                InferenceV2Servicer(
                    dataplane,
                    metrics,
                    max_images_per_request=max_images,
                    max_decoded_pixels=max_pixels,
                ),
                V2_SERVICE,
            ),
        ]

    def _interceptors(self, api_services: list[str]) -> list[aio.ServerInterceptor] | None:
        """Bearer-token auth when a token is configured; None (no interceptor, no cost) if not."""
        try:
            auth = build_auth_interceptor(
                self._auth_token_file,
                self._environ,
                exempt_services=self._auth_exempt_services,
                served_services=[*api_services, HEALTH_SERVICE, reflection.SERVICE_NAME],
                metrics=self._metrics,
            )
        except AuthConfigError as exc:
            raise GrpcStartError(str(exc)) from None
        if auth is None:
            return None
        self.token_auth = True
        if self._tls_cert is None:
            logger.warning(
                "bearer-token auth without TLS: tokens cross the network in clear text; "
                "use --tls-cert/--tls-key unless the network itself is trusted"
            )
        return [auth]

    def _server_options(self) -> list[tuple[str, Any]]:
        limit = self._max_message_bytes
        return [
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            # Without this a second server could bind the same port and steal half the
            # connections; with it a port clash fails at start. Workers (--workers N) share
            # the port the parent reserved on purpose (workers.py).
            ("grpc.so_reuseport", 1 if self._reuse_port else 0),
        ]

    def _bind(self, server: aio.Server) -> int:
        address = self._address
        try:
            if self._tls_cert is not None:
                port = server.add_secure_port(address, self._tls_credentials())
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise GrpcStartError(
                f"cannot bind the gRPC port {address} (is another server using it?): {exc}"
            ) from None
        if port == 0 and not address.startswith("unix:"):
            raise GrpcStartError(f"cannot bind the gRPC port {address} (in use?)")
        return int(port)

    def _tls_credentials(self) -> grpc.ServerCredentials:
        assert self._tls_cert is not None
        assert self._tls_key is not None  # the config accepts a certificate only with its key
        try:
            cert = self._tls_cert.read_bytes()
            key = self._tls_key.read_bytes()
            client_ca = None if self._tls_client_ca is None else self._tls_client_ca.read_bytes()
        except OSError as exc:
            raise GrpcStartError(f"cannot read a TLS file: {exc}") from None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
