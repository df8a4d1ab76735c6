"""`grpc.health.v1` status for the whole server and each of its services, and reflection.

NOT_SERVING until the repository's models are loaded and warm; SERVING after; NOT_SERVING
while no model version can serve (every batch loop died, every model unloaded), SERVING
again once one can; NOT_SERVING for good once shutdown starts (the health servicer's
graceful-shutdown mode ignores later `set` calls, so nothing can flip it back by mistake).
Like every handler of the server, Check and Watch answer an unexpected failure through
`grpc_errors` (INTERNAL, generic message), never with grpc.aio's UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from mnist_serving_proto import classifier_pb2, open_inference_pb2
from mnist_serving_server.grpc_api.grpc_errors import errors_answered

OVERALL = ""
# Service names come from the generated descriptors: the .proto files are the one definition.
CLASSIFIER_SERVICE = classifier_pb2.DESCRIPTOR.services_by_name["Classifier"].full_name
V2_SERVICE = open_inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVICE_NAMES = (OVERALL, CLASSIFIER_SERVICE, V2_SERVICE)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class MappedHealthServicer:
    """grpc's health servicer (composed: its package is untyped), every error of its Check
    and Watch answered through grpc_errors."""

    def __init__(self) -> None:
        self.statuses = health_aio.HealthServicer()
        """Where the statuses live: `set`, `enter_graceful_shutdown`."""

    async def Check(  # noqa: N802 - the protocol's RPC names
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthCheckResponse:
        async with errors_answered(context):
            response: health_pb2.HealthCheckResponse = await self.statuses.Check(request, context)
            return response

    async def Watch(  # noqa: N802
        self, request: health_pb2.HealthCheckRequest, context: aio.ServicerContext[Any, Any]
    ) -> None:
        async with errors_answered(context):
            await self.statuses.Watch(request, context)


class HealthReporter:
    """Owns the health servicer and the status of every service name."""

    def __init__(self, service_names: Sequence[str] = SERVICE_NAMES) -> None:
        self.servicer = MappedHealthServicer()
        self._statuses = self.servicer.statuses
        self.service_names = tuple(service_names)
        self._serving = False

    async def start(self) -> None:
        """Every name NOT_SERVING (the servicer starts with "" SERVING: override it)."""
        for name in self.service_names:
            await self._statuses.set(name, NOT_SERVING)

    def add_to_server(self, server: aio.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)

    @property
    def serving(self) -> bool:
        return self._serving

    async def set_serving(self) -> None:
        for name in self.service_names:
            await self._statuses.set(name, SERVING)
        self._serving = True

    async def set_not_serving(self) -> None:
        """Nothing can be served right now (a later set_serving may follow)."""
        for name in self.service_names:
            await self._statuses.set(name, NOT_SERVING)
        self._serving = False

    async def set_not_serving_for_good(self) -> None:
        """Shutdown: NOT_SERVING, and no later call flips it back."""
        self._serving = False
        await self._statuses.enter_graceful_shutdown()


def enable_reflection(server: aio.Server, service_names: Iterable[str]) -> None:
    """Server reflection (grpcurl, Postman) for the given services, health and itself."""
    names = (*service_names, HEALTH_SERVICE, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
