"""`AsyncClient`: the asyncio SDK client, with the same methods as `Client`."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio

from mnist_serving_client import wire_messages
from mnist_serving_client.client_base import (
    DEFAULT_STREAM_IMAGES_PER_REQUEST,
    ClientBase,
    PendingRequest,
    StreamRequestBuilder,
    remaining_s,
    stream_predictions,
)
from mnist_serving_client.errors import error_from_rpc_error
from mnist_serving_client.health import (
    OVERALL_SERVICE,
    ServingStatus,
    health_request,
    serving_status_from_response,
)
from mnist_serving_client.inputs import ImageInput, ImagesInput
from mnist_serving_client.model_metadata import (
    ModelMetadata,
    model_metadata_from_response,
    model_metadata_request,
)
from mnist_serving_client.prediction import Prediction, predictions_from_response
from mnist_serving_client.repository import (
    RepositoryModel,
    repository_index_request,
    repository_model_request,
    repository_models_from_response,
)
from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc


class AsyncClient(ClientBase):
    """An asyncio client for the mnist-serving Classify API; create it inside a coroutine.

    >>> async with AsyncClient("localhost:8001") as client:
    ...     prediction = await client.classify_one(pixels)

    The methods mirror `Client`'s and take the same arguments; `classify_stream` also
    accepts an async iterable and returns an async iterator.
    """

    def _connect(self) -> None:
        settings = self.settings
        credentials = settings.channel_credentials()
        options = settings.channel_options_list()
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(settings.target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(settings.target, credentials, options=options)
        self._classifier = classifier_pb2_grpc.ClassifierStub(self._channel)
        self._health_check = self._channel.unary_unary(
            wire_messages.HEALTH_CHECK_METHOD,
            request_serializer=wire_messages.serialize,
            response_deserializer=wire_messages.parse_health_response,
        )
        self._model_metadata = self._channel.unary_unary(
            wire_messages.MODEL_METADATA_METHOD,
            request_serializer=wire_messages.serialize,
            response_deserializer=wire_messages.parse_model_metadata_response,
        )
        self._repository_index = self._channel.unary_unary(
            wire_messages.REPOSITORY_INDEX_METHOD,
            request_serializer=wire_messages.serialize,
            response_deserializer=wire_messages.parse_repository_index_response,
        )
        self._repository_load = self._channel.unary_unary(
            wire_messages.REPOSITORY_MODEL_LOAD_METHOD,
            request_serializer=wire_messages.serialize,
            response_deserializer=wire_messages.parse_empty_response,
        )
        self._repository_unload = self._channel.unary_unary(
            wire_messages.REPOSITORY_MODEL_UNLOAD_METHOD,
            request_serializer=wire_messages.serialize,
            response_deserializer=wire_messages.parse_empty_response,
        )

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
            requests(), timeout=call_timeout_s, metadata=self._metadata
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
        timeout = remaining_s(self._deadline(timeout_s))
        response = await self._unary(self._health_check, health_request(service), timeout)
        return serving_status_from_response(response)

    async def metadata(
        self,
        model: str | None = None,
        model_version: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> ModelMetadata:
        """The model's metadata (see `Client.metadata`)."""
        target = self._metadata_target(model, model_version)
        timeout = remaining_s(self._deadline(timeout_s))
        request = model_metadata_request(target.name, target.version)
        response = await self._unary(self._model_metadata, request, timeout)
        return model_metadata_from_response(response)

    async def models(
        self, *, ready_only: bool = False, timeout_s: float | None = None
    ) -> list[RepositoryModel]:
        """The server's model repository (see `Client.models`)."""
        timeout = remaining_s(self._deadline(timeout_s))
        request = repository_index_request(ready_only)
        response = await self._unary(self._repository_index, request, timeout)
        return repository_models_from_response(response)

    async def load_model(self, model: str, *, timeout_s: float | None = None) -> None:
        """Load (or reload) a model of the server's repository (see `Client.load_model`)."""
        request = repository_model_request(model)
        timeout = remaining_s(self._deadline(timeout_s))
        await self._unary(self._repository_load, request, timeout)

    async def unload_model(self, model: str, *, timeout_s: float | None = None) -> None:
        """Unload a model (see `Client.unload_model`)."""
        request = repository_model_request(model)
        timeout = remaining_s(self._deadline(timeout_s))
        await self._unary(self._repository_unload, request, timeout)

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

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[Any, Any],
        request: Any,
        call_timeout_s: float,
    ) -> Any:
        self._check_open()
        try:
            return await method(request, timeout=call_timeout_s, metadata=self._metadata)
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
