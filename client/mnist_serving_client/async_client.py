"""`AsyncClient`: the asyncio SDK client, with the same methods as `Client`."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from mnist_serving_client.client_base import (
    DEFAULT_STREAM_IMAGES_PER_REQUEST,
    ChannelFactories,
    ClientBase,
    PendingRequest,
    StreamRequestBuilder,
    UnaryCall,
    remaining_s,
    stream_predictions,
)
from mnist_serving_client.errors import error_from_rpc_error
from mnist_serving_client.health import (
    OVERALL_SERVICE,
    ServingStatus,
)
from mnist_serving_client.inputs import ImageInput, ImagesInput
from mnist_serving_client.model_metadata import (
    ModelMetadata,
)
from mnist_serving_client.prediction import Prediction, predictions_from_response
from mnist_serving_client.repository import (
    RepositoryModel,
)
from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc


class AsyncClient(ClientBase):
    """An asyncio client for the mnist-serving Classify API; create it inside a coroutine.

    >>> async with AsyncClient("localhost:8001") as client:
    ...     prediction = await client.classify_one(pixels)

    The methods mirror `Client`'s and take the same arguments; `classify_stream` also
    accepts an async iterable and returns an async iterator.
    """

    _classifier: classifier_pb2_grpc.ClassifierAsyncStub

    @staticmethod
    def _channel_factories() -> ChannelFactories:
        return grpc.aio.insecure_channel, grpc.aio.secure_channel

    async def classify(
        self,
        images: ImagesInput,
        top_k: int | None = None,
        *,
        model: str | None = None,
        model_version: str | None = None,
        timeout_s: float | None = None,
    ) -> list[Prediction]:
        """Classify every image, in order (see `Client.classify`)."""
        target = self._model_target(model, model_version)
        requests = self._classify_requests(images, top_k, target)
        deadline = self._deadline(timeout_s)
        predictions: list[Prediction] = []
        for request in requests:
            response = await self._unary(self._classifier.Classify, request, remaining_s(deadline))
            predictions.extend(predictions_from_response(response, len(request.images)))
        return predictions

    async def classify_one(
        self,
        image: ImageInput,
        top_k: int | None = None,
        *,
        model: str | None = None,
        model_version: str | None = None,
        timeout_s: float | None = None,
    ) -> Prediction:
        """Classify exactly one image (see `Client.classify_one`)."""
        request = self._one_request(image, top_k, self._model_target(model, model_version))
        timeout = remaining_s(self._deadline(timeout_s))
        response = await self._unary(self._classifier.Classify, request, timeout)
        return predictions_from_response(response, 1)[0]

    def classify_stream(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        top_k: int | None = None,
        *,
        images_per_request: int = DEFAULT_STREAM_IMAGES_PER_REQUEST,
        model: str | None = None,
        model_version: str | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[Prediction]:
        """Classify a (async) iterable of single images over one stream, in order.

        Same contract as `Client.classify_stream`. If you stop iterating early, close the
        iterator (`contextlib.aclosing`) so the stream is cancelled at once.
        """
        self._check_open()
        target = self._model_target(model, model_version)
        builder = StreamRequestBuilder(self, top_k, images_per_request, target)
        return self._stream(images, builder, self._stream_timeout(timeout_s))

    async def _stream(
        self,
        images: Iterable[ImageInput] | AsyncIterable[ImageInput],
        builder: StreamRequestBuilder,
        call_timeout_s: float | None,
    ) -> AsyncIterator[Prediction]:
        window = asyncio.Semaphore(self.settings.stream_window)
        pending: collections.deque[PendingRequest] = collections.deque()
        input_errors: list[BaseException] = []

        async def send(ready: tuple[PendingRequest, Any]) -> classifier_pb2.ClassifyRequest:
            await window.acquire()
            pending.append(ready[0])
            request: classifier_pb2.ClassifyRequest = ready[1]
            return request

        async def requests() -> AsyncIterator[classifier_pb2.ClassifyRequest]:
            # An error in the caller's iterable or image ends the request stream cleanly
            # and is re-raised to the caller after the predictions before it.
            try:
                async for image in _as_async_iterable(images):
                    ready = builder.add(image)
                    if ready is not None:
                        yield await send(ready)
                last = builder.flush()
                if last is not None:
                    yield await send(last)
            except Exception as error:
                input_errors.append(error)

        call = self._classifier.ClassifyStream(
            requests(), timeout=call_timeout_s, metadata=self._call_metadata
        )
        try:
            async for response in call:
                predictions = stream_predictions(response, pending.popleft())
                window.release()
                for prediction in predictions:
                    yield prediction
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error
        finally:
            call.cancel()
        if input_errors:
            raise input_errors[0]

    async def health(
        self, service: str = OVERALL_SERVICE, *, timeout_s: float | None = None
    ) -> ServingStatus:
        """The grpc.health.v1 status of `service` ("" = the whole server)."""
        status: ServingStatus = await self._run(self._health_call(service, timeout_s))
        return status

    async def model_metadata(
        self,
        model: str | None = None,
        model_version: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> ModelMetadata:
        """The model's metadata (see `Client.model_metadata`)."""
        metadata: ModelMetadata = await self._run(
            self._model_metadata_call(model, model_version, timeout_s)
        )
        return metadata

    async def metadata(
        self,
        model: str | None = None,
        model_version: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> ModelMetadata:
        """The same as `model_metadata` (the name earlier releases had)."""
        return await self.model_metadata(model, model_version, timeout_s=timeout_s)

    async def models(
        self, *, ready_only: bool = False, timeout_s: float | None = None
    ) -> list[RepositoryModel]:
        """The server's model repository (see `Client.models`)."""
        models: list[RepositoryModel] = await self._run(self._models_call(ready_only, timeout_s))
        return models

    async def load_model(self, model: str, *, timeout_s: float | None = None) -> None:
        """Load (or reload) a model of the server's repository (see `Client.load_model`)."""
        await self._run(self._load_call(model, timeout_s))

    async def unload_model(self, model: str, *, timeout_s: float | None = None) -> None:
        """Unload a model (see `Client.unload_model`)."""
        await self._run(self._unload_call(model, timeout_s))

    async def close(self) -> None:
        """Close the connection; calls in progress are cancelled. Safe to call twice."""
        if not self._closed:
            self._closed = True
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, call: UnaryCall) -> Any:
        return call.parse(await self._unary(call.method, call.request, call.timeout_s))

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Any, Any],
        request: Any,
        call_timeout_s: float,
    ) -> Any:
        self._check_open()
        try:
            return await method(request, timeout=call_timeout_s, metadata=self._call_metadata)
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error


async def _as_async_iterable(
    images: Iterable[ImageInput] | AsyncIterable[ImageInput],
) -> AsyncIterator[ImageInput]:
    if isinstance(images, AsyncIterable):
        async for image in images:
            yield image
    else:
        for image in images:
            yield image
