"""KServe V2 / Open Inference Protocol: `inference.GRPCInferenceService` (docs/v2_protocol.md),
with Triton's extensions: model repository, model configuration, statistics, classification.

Thin, like the Classify servicer: protobuf <-> numpy happens in `v2_tensors`, every model
goes through the DataPlane, every error through `grpc_errors` (the one table), every RPC
through `call_metrics.track_request`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any, Final, TypeAlias

from grpc import aio

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.core.dataplane import DataPlane
from mnist_serving_server.core.errors import ServingError
from mnist_serving_server.core.images import DEFAULT_MAX_DECODED_PIXELS
from mnist_serving_server.core.model_config import PLATFORM
from mnist_serving_server.core.registry import ServedVersion
from mnist_serving_server.core.server_info import EXTENSIONS, SERVER_NAME, server_version
from mnist_serving_server.core.tensors import answer_outputs
from mnist_serving_server.grpc_api import v2_tensors
from mnist_serving_server.grpc_api.call_metrics import RequestRecord, track_request
from mnist_serving_server.grpc_api.grpc_errors import abort_with, status_for
from mnist_serving_server.grpc_api.ordered_stream import replies_in_order
from mnist_serving_server.grpc_api.triton_messages import (
    model_config_response,
    model_statistics,
)
from mnist_serving_server.metrics import ServerMetrics

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
        self._max_rows = max_images_per_request
        self._max_decoded_pixels = max_decoded_pixels
        self._server_metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=server_version(), extensions=EXTENSIONS
        )

    # --- health and metadata -------------------------------------------------------------

    async def ServerLive(  # noqa: N802 - the protocol's RPC names
        self, request: pb.ServerLiveRequest, context: _Context
    ) -> pb.ServerLiveResponse:
        with track_request(self._metrics, "ServerLive"):
            # Answering at all is liveness; readiness is ServerReady's business.
            return pb.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: _Context
    ) -> pb.ServerReadyResponse:
        with track_request(self._metrics, "ServerReady"):
            return pb.ServerReadyResponse(ready=self._dataplane.ready)

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: _Context
    ) -> pb.ModelReadyResponse:
        with track_request(self._metrics, "ModelReady"):
            return pb.ModelReadyResponse(
                ready=self._dataplane.model_ready(request.name, request.version)
            )

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: _Context
    ) -> pb.ServerMetadataResponse:
        with track_request(self._metrics, "ServerMetadata"):
            return self._server_metadata

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: _Context
    ) -> pb.ModelMetadataResponse:
        with track_request(self._metrics, "ModelMetadata") as record:
            try:
                served = self._resolve(request.name, request.version, record)
            except ServingError as exc:
                await abort_with(context, exc, record)
            info = served.info
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
        with track_request(self._metrics, "ModelConfig") as record:
            try:
                self._resolve(request.name, request.version, record)
                config, served = self._dataplane.model_config(request.name)
            except ServingError as exc:
                await abort_with(context, exc, record)
            return model_config_response(config, served.info)

    async def ModelStatistics(  # noqa: N802
        self, request: pb.ModelStatisticsRequest, context: _Context
    ) -> pb.ModelStatisticsResponse:
        with track_request(self._metrics, "ModelStatistics") as record:
            try:
                records = await self._dataplane.statistics(request.name, request.version)
            except ServingError as exc:
                await abort_with(context, exc, record)
            return pb.ModelStatisticsResponse(model_stats=[model_statistics(r) for r in records])

    # --- the model repository extension --------------------------------------------------

    async def RepositoryIndex(  # noqa: N802
        self, request: pb.RepositoryIndexRequest, context: _Context
    ) -> pb.RepositoryIndexResponse:
        with track_request(self._metrics, "RepositoryIndex"):
            return pb.RepositoryIndexResponse(
                models=[
                    pb.RepositoryIndexResponse.ModelIndex(
                        name=entry.name,
                        version=entry.version,
                        state=entry.state.value,
                        reason=entry.reason,
                    )
                    for entry in await self._dataplane.index(ready_only=request.ready)
                ]
            )

    async def RepositoryModelLoad(  # noqa: N802
        self, request: pb.RepositoryModelLoadRequest, context: _Context
    ) -> pb.RepositoryModelLoadResponse:
        with track_request(self._metrics, "RepositoryModelLoad") as record:
            try:
                await self._dataplane.load(request.model_name)
            except ServingError as exc:
                await abort_with(context, exc, record)
            return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(  # noqa: N802
        self, request: pb.RepositoryModelUnloadRequest, context: _Context
    ) -> pb.RepositoryModelUnloadResponse:
        with track_request(self._metrics, "RepositoryModelUnload") as record:
            try:
                await self._dataplane.unload(request.model_name)
            except ServingError as exc:
                await abort_with(context, exc, record)
            return pb.RepositoryModelUnloadResponse()

    # --- inference -----------------------------------------------------------------------

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: _Context
    ) -> pb.ModelInferResponse:
        with track_request(self._metrics, "ModelInfer") as record:
            try:
                return await self._infer(request, context.time_remaining(), record)
            except Exception as exc:
                await abort_with(context, exc, record)

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: _Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Replies in request order; up to STREAM_WINDOW requests are computed concurrently.

        A failed request is answered with `error_message` (and its id) and the stream goes on.
        """
        with track_request(self._metrics, "ModelStreamInfer"):

            def answer(request: pb.ModelInferRequest) -> Awaitable[pb.ModelStreamInferResponse]:
                return self._stream_one(request, context)

            async for reply in replies_in_order(request_iterator, answer):
                yield reply

    async def _stream_one(
        self, request: pb.ModelInferRequest, context: _Context
    ) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(
                infer_response=await self._infer(request, context.time_remaining(), None)
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
    ) -> pb.ModelInferResponse:
        """One ModelInferRequest through its model's batcher; raises ServingError subclasses."""
        started = time.monotonic()
        served = self._resolve(request.model_name, request.model_version, record)
        info = served.info
        requested = v2_tensors.select_outputs(request, served.output_names)
        decoded = v2_tensors.decode_input(
            request,
            info.inputs[0],
            max_rows=self._max_rows,
            max_decoded_pixels=self._max_decoded_pixels,
        )
        deadline = _earliest(
            None if time_remaining_s is None else started + time_remaining_s,
            _plus(started, v2_tensors.queue_timeout_s(request)),
        )
        computed = await self._dataplane.infer(served, decoded.array, deadline=deadline)
        outputs = answer_outputs(computed, requested, info.labels)
        response = pb.ModelInferResponse(
            model_name=info.name, model_version=info.version, id=request.id
        )
        v2_tensors.encode_outputs(response, outputs, raw=decoded.raw)
        return response


def _plus(start: float, seconds: float | None) -> float | None:
    return None if seconds is None else start + seconds


def _earliest(*deadlines: float | None) -> float | None:
    known = [deadline for deadline in deadlines if deadline is not None]
    return min(known) if known else None
