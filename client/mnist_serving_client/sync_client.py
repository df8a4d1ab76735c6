"""`Client`: the blocking SDK client."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Self

import grpc

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

# How often a stream's request thread, waiting for a free window slot, checks whether the
# stream has ended meanwhile (so it never waits forever on a finished call).
WINDOW_POLL_S = 0.1


class Client(ClientBase):
    """A blocking client for the mnist-serving Classify API.

    >>> with Client("localhost:8001") as client:
    ...     prediction = client.classify_one(pixels)  # uint8 [28, 28]

    Thread-safe: one client (one HTTP/2 connection) may serve many threads. Every method
    raises `MnistServingError` subclasses only. See `ClientBase.__init__` for the options.
    """

    _classifier: classifier_pb2_grpc.ClassifierStub

    @staticmethod
    def _channel_factories() -> ChannelFactories:
        return grpc.insecure_channel, grpc.secure_channel

    def classify(
        self,
        images: ImagesInput,
        top_k: int | None = None,
        *,
        model: str | None = None,
        model_version: str | None = None,
        timeout_s: float | None = None,
    ) -> list[Prediction]:
        """Classify every image, in order.

        `images`: a numpy array (28x28, Nx28x28 or Nx1x28x28; uint8 or float in [0, 1]), a
        PIL image, a PNG/JPEG file path or bytes, or an iterable of any of them. Inputs
        larger than `max_images_per_request` go as several requests, reassembled in order.
        `top_k` (1-10) also fills each prediction's `top_k`. `model` / `model_version`
        choose the model for this call (None: the client's `model_name` / `model_version`;
        a version given with the client's model only, else the latest).
        """
        target = self._model_target(model, model_version)
        requests = self._classify_requests(images, top_k, target)
        deadline = self._deadline(timeout_s)
        predictions: list[Prediction] = []
        for request in requests:
            response = self._unary(self._classifier.Classify, request, remaining_s(deadline))
            predictions.extend(predictions_from_response(response, len(request.images)))
        return predictions

    def classify_one(
        self,
        image: ImageInput,
        top_k: int | None = None,
        *,
        model: str | None = None,
        model_version: str | None = None,
        timeout_s: float | None = None,
    ) -> Prediction:
        """Classify exactly one image (any single-image form `classify` accepts)."""
        request = self._one_request(image, top_k, self._model_target(model, model_version))
        timeout = remaining_s(self._deadline(timeout_s))
        response = self._unary(self._classifier.Classify, request, timeout)
        return predictions_from_response(response, 1)[0]

    def classify_stream(
        self,
        images: Iterable[ImageInput],
        top_k: int | None = None,
        *,
        images_per_request: int = DEFAULT_STREAM_IMAGES_PER_REQUEST,
        model: str | None = None,
        model_version: str | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[Prediction]:
        """Classify an iterable of single images over one bidirectional stream.

        Yields one `Prediction` per image, in input order, while later images are still
        being sent. At most `stream_window` requests are in flight, and images are read
        from `images` only as the window allows, so memory stays bounded however long
        the iterable is. A per-request error raises its exception after the predictions
        before it. `timeout_s` bounds the whole stream (default: `stream_timeout_s`);
        `model` / `model_version` as in `classify`.
        """
        self._check_open()
        # Validate the arguments now, not at the first next().
        target = self._model_target(model, model_version)
        builder = StreamRequestBuilder(self, top_k, images_per_request, target)
        return self._stream(images, builder, self._stream_timeout(timeout_s))

    def _stream(
        self, images: Iterable[ImageInput], builder: StreamRequestBuilder, timeout: float | None
    ) -> Iterator[Prediction]:
        window = threading.Semaphore(self.settings.stream_window)
        finished = threading.Event()
        pending: collections.deque[PendingRequest] = collections.deque()
        input_errors: list[BaseException] = []

        def send(ready: tuple[PendingRequest, classifier_pb2.ClassifyRequest]) -> bool:
            # Wait for a free window slot; False when the stream ended meanwhile.
            while not window.acquire(timeout=WINDOW_POLL_S):
                if finished.is_set():
                    return False
            if finished.is_set():
                return False
            pending.append(ready[0])
            return True

        def requests() -> Iterator[classifier_pb2.ClassifyRequest]:
            # Runs in gRPC's sending thread. An error in the caller's iterable or image
            # ends the request stream cleanly and is re-raised to the caller in order.
            try:
                for image in images:
                    ready = builder.add(image)
                    if ready is not None:
                        if not send(ready):
                            return
                        yield ready[1]
                last = builder.flush()
                if last is not None and send(last):
                    yield last[1]
            except Exception as error:
                input_errors.append(error)

        call = self._classifier.ClassifyStream(
            requests(), timeout=timeout, metadata=self._call_metadata
        )
        try:
            for response in call:
                predictions = stream_predictions(response, pending.popleft())
                window.release()
                yield from predictions
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error
        finally:
            finished.set()
            call.cancel()
        if input_errors:
            raise input_errors[0]

    def health(
        self, service: str = OVERALL_SERVICE, *, timeout_s: float | None = None
    ) -> ServingStatus:
        """The grpc.health.v1 status of `service` ("" = the whole server)."""
        status: ServingStatus = self._run(self._health_call(service, timeout_s))
        return status

    def model_metadata(
        self,
        model: str | None = None,
        model_version: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> ModelMetadata:
        """The model's metadata (KServe V2 ModelMetadata): versions, platform, tensors.

        `model` / `model_version` as in `classify`; no model at all means "mnist", the
        server's default.
        """
        metadata: ModelMetadata = self._run(
            self._model_metadata_call(model, model_version, timeout_s)
        )
        return metadata

    def metadata(
        self,
        model: str | None = None,
        model_version: str | None = None,
        *,
        timeout_s: float | None = None,
    ) -> ModelMetadata:
        """The same as `model_metadata` (the name earlier releases had)."""
        return self.model_metadata(model, model_version, timeout_s=timeout_s)

    def models(
        self, *, ready_only: bool = False, timeout_s: float | None = None
    ) -> list[RepositoryModel]:
        """The server's model repository (Triton's RepositoryIndex): one `RepositoryModel`
        (name, version, state, reason) per model version, loaded or not; with `ready_only`,
        only those that are READY."""
        models: list[RepositoryModel] = self._run(self._models_call(ready_only, timeout_s))
        return models

    def load_model(self, model: str, *, timeout_s: float | None = None) -> None:
        """Load (or reload) `model` from the server's repository (RepositoryModelLoad);
        returns once it is loaded. Raises NotFoundError for a model the repository does
        not hold, FailedPreconditionError when the server's model control is off."""
        self._run(self._load_call(model, timeout_s))

    def unload_model(self, model: str, *, timeout_s: float | None = None) -> None:
        """Unload `model` (RepositoryModelUnload): its requests then fail with NotFoundError
        until it is loaded again. Raises FailedPreconditionError when the server's model
        control is off."""
        self._run(self._unload_call(model, timeout_s))

    def close(self) -> None:
        """Close the connection; calls in progress are cancelled. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, call: UnaryCall) -> Any:
        return call.parse(self._unary(call.method, call.request, call.timeout_s))

    def _unary(
        self, method: grpc.UnaryUnaryMultiCallable[Any, Any], request: Any, timeout: float
    ) -> Any:
        self._check_open()
        try:
            return method(request, timeout=timeout, metadata=self._call_metadata)
        except grpc.RpcError as error:
            raise error_from_rpc_error(error) from error
