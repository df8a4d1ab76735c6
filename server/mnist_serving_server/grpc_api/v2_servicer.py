"""KServe V2 / Open Inference Protocol: `inference.GRPCInferenceService` (docs/v2_protocol.md),
with Triton's extensions: model repository, model configuration, statistics, classification.

Thin, like the Classify servicer: protobuf <-> numpy happens in `v2_tensors`, every model
goes through the DataPlane, every error through `grpc_errors` (each error kind carries its
status), every RPC through `call_metrics` (`answered_call`: counted, and no exception left
to grpc.aio, which would answer UNKNOWN).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from grpc import aio

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.core.dataplane import DataPlane
from mnist_serving_server.core.images import DEFAULT_MAX_DECODED_PIXELS
from mnist_serving_server.core.inference import RequestLimits
from mnist_serving_server.core.model_config import PLATFORM
from mnist_serving_server.core.registry import ServedVersion
from mnist_serving_server.core.server_info import EXTENSIONS, SERVER_NAME, server_version
from mnist_serving_server.grpc_api import v2_tensors
from mnist_serving_server.grpc_api.call_metrics import RequestRecord, answered_call, track_request
from mnist_serving_server.grpc_api.grpc_errors import abort_with, status_for
from mnist_serving_server.grpc_api.ordered_stream import replies_in_order
from mnist_serving_server.grpc_api.triton_messages import (
    model_config_response,
    model_statistics,
)
from mnist_serving_server.metrics import ServerMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

SERVICE_NAME: Final = "inference.GRPCInferenceService"

_Context: TypeAlias = aio.ServicerContext[Any, Any]


def _tensor_metadata(
    specs: tuple[Any, ...],
) -> list[pb.ModelMetadataResponse.TensorMetadata]:
    return [
        pb.ModelMetadataResponse.TensorMetadata(
            name=spec.name, datatype=spec.datatype, shape=spec.shape
        )
        for spec in specs
    ]


class InferenceV2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 RPCs over the DataPlane (every model of the repository)."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: ServerMetrics,
        *,
        max_images_per_request: int,
        max_decoded_pixels: int = DEFAULT_MAX_DECODED_PIXELS,
    ) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._limits = RequestLimits(max_images_per_request, max_decoded_pixels)
        self._server_metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS
        )

    # --- health and metadata -------------------------------------------------------------

    async def ServerLive(  # noqa: N802 - the protocol's RPC names
        self, request: pb.ServerLiveRequest, context: _Context
    ) -> pb.ServerLiveResponse:
        async with answered_call(self._metrics, "ServerLive", context):
            # Answering at all is liveness; readiness is ServerReady's business.
            return pb.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: _Context
    ) -> pb.ServerReadyResponse:
        async with answered_call(self._metrics, "ServerReady", context):
            return pb.ServerReadyResponse(ready=self._dataplane.ready)

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: _Context
    ) -> pb.ModelReadyResponse:
        async with answered_call(self._metrics, "ModelReady", context):
            return pb.ModelReadyResponse(
                ready=self._dataplane.model_ready(request.name, request.version)
            )

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: _Context
    ) -> pb.ServerMetadataResponse:
        async with answered_call(self._metrics, "ServerMetadata", context):
            return self._server_metadata

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: _Context
    ) -> pb.ModelMetadataResponse:
        async with answered_call(self._metrics, "ModelMetadata", context) as record:
            info = self._resolve(request.name, request.version, record).info
            versions = self._dataplane.versions(info.name)
            return pb.ModelMetadataResponse(
                name=info.name,
                versions=versions,
                platform=PLATFORM,
                inputs=_tensor_metadata(info.inputs),
                outputs=_tensor_metadata(info.outputs),
            )

    async def ModelConfig(  # noqa: N802
        self, request: pb.ModelConfigRequest, context: _Context
    ) -> pb.ModelConfigResponse:
        async with answered_call(self._metrics, "ModelConfig", context) as record:
            self._resolve(request.name, request.version, record)
            config, served = self._dataplane.model_config(request.name)
            return model_config_response(config, served.info)

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: _Context
    ) -> pb.ModelStatisticsResponse:
        async with answered_call(self._metrics, "ModelStatistics", context):
            records = await self._dataplane.statistics(request.name, request.version)
            return pb.ModelStatisticsResponse(model_stats=[model_statistics(r) for r in records])

    # --- the model repository extension --------------------------------------------------

    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: _Context
    ) -> pb.RepositoryIndexResponse:
        async with answered_call(self._metrics, "RepositoryIndex", context):
            entries = await self._dataplane.index(ready_only=request.ready)
            return pb.RepositoryIndexResponse(
                models=[
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=entry.name,
                        version=entry.version,
                        state=entry.state.value,
                        reason=entry.reason,
                    )
                    for entry in entries
                ]
            )

    async def RepositoryModelLoad(  # noqa: N802
        self, request: pb.RepositoryModelLoadRequest, context: _Context
    ) -> pb.RepositoryModelLoadResponse:
        async with answered_call(self._metrics, "RepositoryModelLoad", context):
            await self._dataplane.load(request.model_name)
            return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(  # noqa: N802
        self, request: pb.RepositoryModelUnloadRequest, context: _Context
    ) -> pb.RepositoryModelUnloadResponse:
        async with answered_call(self._metrics, "RepositoryModelUnload", context):
            await self._dataplane.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

    # --- inference -----------------------------------------------------------------------

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: _Context
    ) -> pb.ModelInferResponse:
        with track_request(self._metrics, "ModelInfer", context) as record:
            try:
                return await self._infer(request, context.time_remaining(), record)
            except Exception as exc:
                await abort_with(context, exc, record)

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: _Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Replies in request order; up to STREAM_WINDOW requests are computed concurrently.

        A failed request is answered with `error_message` (and its id) and the stream goes on.
        Traced, each request's queue and batch spans belong to the stream's span.
        """
        with track_request(self._metrics, "ModelStreamInfer", context, current=False) as record:
            trace = record.span_context

            def answer(request: pb.ModelInferRequest) -> Awaitable[pb.ModelStreamInferResponse]:
                return self._stream_one(request, context, trace)

            async for reply in replies_in_order(request_iterator, answer):
                yield reply

    async def _stream_one(
        self, request: pb.ModelInferRequest, context: _Context, trace: SpanContext | None
    ) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(
                infer_response=await self._infer(request, context.time_remaining(), None, trace)
            )
        except Exception as exc:
            code, message = status_for(exc)
            # The id (and model) let the client match the failure to its request.
            return pb.ModelStreamInferResponse(
                error_message=f"{code.name}: {message}",
                infer_response=pb.ModelInferResponse(
                    model_name=request.model_name,
                    model_version=request.model_version,
                    id=request.id,
                ),
            )

    def _resolve(self, name: str, version: str, record: RequestRecord | None) -> ServedVersion:
        served = self._dataplane.model(name, version)
        if record is not None:
            record.model = served.name
            record.version = served.version
        return served

    async def _infer(
        self,
        request: pb.ModelInferRequest,
        time_remaining_s: float | None,
        record: RequestRecord | None,
        stream_trace: SpanContext | None = None,
    ) -> pb.ModelInferResponse:
        """One ModelInferRequest through the core; raises ServingError subclasses.
        `record`: a unary call's; a stream's requests have none, but its `stream_trace`."""
        deadline = None if time_remaining_s is None else time.monotonic() + time_remaining_s
        core, raw = v2_tensors.core_request(request, deadline)
        if record is not None:
            record.trace_request(core)
        else:
            core.trace = stream_trace
        try:
            response = await self._dataplane.infer_request(core, self._limits)
        finally:
            if record is not None:
                record.model = core.resolved_model
                record.version = core.resolved_version
        return v2_tensors.grpc_response(response, raw=raw)
