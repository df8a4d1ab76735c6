"""KServe V2 / Open Inference Protocol: `inference.GRPCInferenceService` (docs/v2_protocol.md).

Thin, like the Classify servicer: protobuf <-> numpy happens in `v2_tensors`, every image
goes through `InferenceService.infer` (the one batcher both APIs share), every error
through `grpc_errors` (the one table), every RPC through `ServerMetrics.track_request`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from importlib import metadata
from typing import Any, Final, TypeAlias

from grpc import aio

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.config import ServerConfig
from mnist_serving_server.core.dataplane import InferenceService
from mnist_serving_server.core.errors import ModelNotFoundError, ServingError
from mnist_serving_server.grpc_api import v2_tensors
from mnist_serving_server.grpc_api.grpc_errors import abort_with, status_for
from mnist_serving_server.grpc_api.ordered_stream import replies_in_order
from mnist_serving_server.metrics import ServerMetrics

SERVICE_NAME: Final = "inference.GRPCInferenceService"
SERVER_NAME: Final = "mnist-serving"
DISTRIBUTION: Final = "mnist-serving"
UNKNOWN_VERSION: Final = "0+unknown"
PLATFORM: Final = "onnxruntime_onnx"
"""Triton's platform name for ONNX models run by ONNX Runtime."""
EXTENSIONS: Final[tuple[str, ...]] = ()
"""No optional V2/Triton extension (model repository, shared memory, statistics,
classification, sequence, ...) is implemented, so none is advertised."""

_Context: TypeAlias = aio.ServicerContext[Any, Any]


def _server_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return UNKNOWN_VERSION


class InferenceV2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """The V2 RPCs over one InferenceService."""

    def __init__(
        self, inference: InferenceService, metrics: ServerMetrics, config: ServerConfig
    ) -> None:
        self._inference = inference
        self._metrics = metrics
        self._max_images = config.max_images_per_request
        self._server_metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=_server_version(), extensions=EXTENSIONS
        )
        info = inference.info
        self._input_name = info.inputs[0].name
        self._output_names = tuple(spec.name for spec in info.outputs)
        self._model_metadata = pb.ModelMetadataResponse(
            name=info.name,
            versions=[info.version],
            platform=PLATFORM,
            inputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=spec.name, datatype=spec.datatype, shape=spec.shape
                )
                for spec in info.inputs
            ],
            outputs=[
                pb.ModelMetadataResponse.TensorMetadata(
                    name=spec.name, datatype=spec.datatype, shape=spec.shape
                )
                for spec in info.outputs
            ],
        )

    # --- health and metadata -------------------------------------------------------------

    async def ServerLive(  # noqa: N802 - the protocol's RPC names
        self, request: pb.ServerLiveRequest, context: _Context
    ) -> pb.ServerLiveResponse:
        with self._metrics.track_request("ServerLive"):
            # Answering at all is liveness; readiness is ServerReady's business.
            return pb.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: pb.ServerReadyRequest, context: _Context
    ) -> pb.ServerReadyResponse:
        with self._metrics.track_request("ServerReady"):
            return pb.ServerReadyResponse(ready=self._inference.ready)

    async def ModelReady(  # noqa: N802
        self, request: pb.ModelReadyRequest, context: _Context
    ) -> pb.ModelReadyResponse:
        with self._metrics.track_request("ModelReady"):
            try:
                self._inference.check_model(request.name, request.version)
            except ModelNotFoundError:
                # As Triton does: a model that is not served is simply not ready.
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=self._inference.ready)

    async def ServerMetadata(  # noqa: N802
        self, request: pb.ServerMetadataRequest, context: _Context
    ) -> pb.ServerMetadataResponse:
        with self._metrics.track_request("ServerMetadata"):
            return self._server_metadata

    async def ModelMetadata(  # noqa: N802
        self, request: pb.ModelMetadataRequest, context: _Context
    ) -> pb.ModelMetadataResponse:
        with self._metrics.track_request("ModelMetadata") as record:
            try:
                self._inference.check_model(request.name, request.version)
            except ServingError as exc:
                await abort_with(context, exc, record)
            return self._model_metadata

    # --- inference -----------------------------------------------------------------------

    async def ModelInfer(  # noqa: N802
        self, request: pb.ModelInferRequest, context: _Context
    ) -> pb.ModelInferResponse:
        with self._metrics.track_request("ModelInfer") as record:
            try:
                return await self._infer(request, context.time_remaining())
            except Exception as exc:
                await abort_with(context, exc, record)

    async def ModelStreamInfer(  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: _Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Replies in request order; up to STREAM_WINDOW requests are computed concurrently.

        A failed request is answered with `error_message` (and its id) and the stream goes on.
        """
        with self._metrics.track_request("ModelStreamInfer"):

            def answer(request: pb.ModelInferRequest) -> Awaitable[pb.ModelStreamInferResponse]:
                return self._stream_one(request, context)

            async for reply in replies_in_order(request_iterator, answer):
                yield reply

    async def _stream_one(
        self, request: pb.ModelInferRequest, context: _Context
    ) -> pb.ModelStreamInferResponse:
        try:
            return pb.ModelStreamInferResponse(
                infer_response=await self._infer(request, context.time_remaining())
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

    async def _infer(
        self, request: pb.ModelInferRequest, time_remaining_s: float | None
    ) -> pb.ModelInferResponse:
        """One ModelInferRequest through the shared batcher; raises ServingError subclasses."""
        started = time.monotonic()
        self._inference.check_model(request.model_name, request.model_version)
        output_names = v2_tensors.select_outputs(request, self._output_names)
        decoded = v2_tensors.decode_input(
            request, input_name=self._input_name, max_images=self._max_images
        )
        deadline = _earliest(
            None if time_remaining_s is None else started + time_remaining_s,
            _plus(started, v2_tensors.queue_timeout_s(request)),
        )
        outputs = await self._inference.infer(decoded.pixels, deadline=deadline)
        info = self._inference.info
        response = pb.ModelInferResponse(
            model_name=info.name, model_version=info.version, id=request.id
        )
        v2_tensors.encode_outputs(response, outputs, output_names, raw=decoded.raw)
        return response


def _plus(start: float, seconds: float | None) -> float | None:
    return None if seconds is None else start + seconds


def _earliest(*deadlines: float | None) -> float | None:
    known = [deadline for deadline in deadlines if deadline is not None]
    return min(known) if known else None
