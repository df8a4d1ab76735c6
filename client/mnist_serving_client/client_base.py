"""What `Client` and `AsyncClient` share: settings, the connection, how requests are built.

Keeping this in one place is what makes the two clients behave identically; they differ
only in how they wait (threads vs. asyncio). Retries are gRPC's own, configured once in
the channel's service config (connection.ClientSettings.service_config), so both kinds
retry the same way.

"Metadata" means two things here, named apart: *call metadata* (the gRPC headers sent
with every call: the bearer token, `ClientSettings.call_metadata`) and *model metadata*
(KServe V2 ModelMetadata, what `model_metadata()` returns: versions, platform, tensors).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from mnist_serving_client import wire_messages
from mnist_serving_client.connection import (
    DEFAULT_KEEPALIVE_TIME_S,
    DEFAULT_MAX_IMAGES_PER_REQUEST,
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_STREAM_WINDOW,
    DEFAULT_TIMEOUT_S,
    ClientSettings,
    RetryPolicy,
    TlsConfig,
)
from mnist_serving_client.errors import (
    DeadlineExceededError,
    InvalidInputError,
    MnistServingError,
    error_for_status_number,
)
from mnist_serving_client.health import (
    health_request,
    serving_status_from_response,
)
from mnist_serving_client.inputs import (
    ImageInput,
    ImagesInput,
    encode_images,
    encode_single_image,
    split_requests,
)
from mnist_serving_client.model_metadata import (
    DEFAULT_MODEL_NAME,
    model_metadata_from_response,
    model_metadata_request,
)
from mnist_serving_client.prediction import NUM_CLASSES, Prediction, predictions_from_response
from mnist_serving_client.repository import (
    repository_index_request,
    repository_model_request,
    repository_models_from_response,
)
from mnist_serving_client.tracing import trace_metadata
from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc

# Images per stream request: 1 sends each image as soon as the iterable yields it (lowest
# latency for live sources); raise it for throughput on bulk data.
DEFAULT_STREAM_IMAGES_PER_REQUEST = 1


@dataclass(frozen=True)
class ModelTarget:
    """The model and version one call asks for ("" = the server's default / latest)."""

    name: str
    version: str


@dataclass(frozen=True)
class UnaryCall:
    """One unary call, built but not sent: what to call, with what, and how to read it."""

    method: Any  # a sync or asyncio UnaryUnaryMultiCallable
    request: Any
    timeout_s: float
    parse: Callable[[Any], Any]


def _ignore_reply(_reply: Any) -> None:
    return None


# The channel constructors: (insecure_channel, secure_channel) of grpc or grpc.aio.
ChannelFactories = tuple[Callable[..., Any], Callable[..., Any]]


@dataclass(frozen=True)
class PendingRequest:
    """A request sent on a stream, waiting for its reply."""

    request_id: str
    image_count: int


class ClientBase:
    """Settings and request building shared by `Client` and `AsyncClient`."""

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        stream_timeout_s: float | None = None,
        model_name: str = "",
        model_version: str = "",
        max_images_per_request: int = DEFAULT_MAX_IMAGES_PER_REQUEST,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        retry: RetryPolicy | None = None,
        tls: TlsConfig | bool | None = None,
        token: str | None = None,
        token_file: str | Path | None = None,
        keepalive_time_s: float = DEFAULT_KEEPALIVE_TIME_S,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Configure a client (no connection is made until the first call).

        Args:
            target: the server's gRPC address, e.g. "localhost:8001" or
                "dns:///mnist.ns.svc.cluster.local:8001" (round-robin over every address).
            timeout_s: deadline of each method call (all its requests and retries).
            stream_timeout_s: deadline of a whole `classify_stream`; None = no deadline.
            model_name, model_version: which model to ask for; "" = the server's default.
                Every call that targets a model also takes `model=` / `model_version=`,
                which override these for that call.
            max_images_per_request: larger inputs are split into requests of at most this
                many images (the server's --max-images-per-request).
            stream_window: requests a stream keeps in flight before waiting for replies.
            retry: the retry policy (default: 4 attempts, 0.1 s doubling up to 2 s).
            tls: a `TlsConfig`, True for TLS with the system's roots, None/False = plaintext.
            token, token_file: a bearer token (or a file holding it) for every call.
            keepalive_time_s: ping interval that detects dead connections.
            max_message_bytes: largest message sent or received.
            channel_options: extra gRPC channel arguments (they override ours).
        """
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = Path(token_file).read_text().strip()
        tls_config = TlsConfig() if tls is True else (tls or None)
        self._settings = ClientSettings(
            target=target,
            timeout_s=timeout_s,
            stream_timeout_s=stream_timeout_s,
            model_name=model_name,
            model_version=model_version,
            max_images_per_request=max_images_per_request,
            stream_window=stream_window,
            retry=retry or RetryPolicy(),
            tls=tls_config,
            token=token,
            keepalive_time_s=keepalive_time_s,
            max_message_bytes=max_message_bytes,
            channel_options=tuple(channel_options),
        )
        self._closed = False
        self._connect()

    @staticmethod
    def _channel_factories() -> ChannelFactories:
        """grpc's (insecure_channel, secure_channel), or grpc.aio's (each client kind)."""
        raise NotImplementedError

    def _connect(self) -> None:
        """Create the channel and the callables of every RPC the SDK makes."""
        settings = self.settings
        credentials = settings.channel_credentials()
        options = settings.channel_options_list()
        insecure_channel, secure_channel = self._channel_factories()
        if credentials is None:
            self._channel = insecure_channel(settings.target, options=options)
        else:
            self._channel = secure_channel(settings.target, credentials, options=options)
        # Typed by each client kind (a sync or an asyncio stub over the same channel type).
        self._classifier: Any = classifier_pb2_grpc.ClassifierStub(self._channel)

        def rpc(path: str, parse: Callable[[bytes], Any]) -> Any:
            return self._channel.unary_unary(
                path, request_serializer=wire_messages.serialize, response_deserializer=parse
            )

        self._health_rpc = rpc(
            wire_messages.HEALTH_CHECK_METHOD, wire_messages.parse_health_response
        )
        self._model_metadata_rpc = rpc(
            wire_messages.MODEL_METADATA_METHOD, wire_messages.parse_model_metadata_response
        )
        self._repository_index_rpc = rpc(
            wire_messages.REPOSITORY_INDEX_METHOD, wire_messages.parse_repository_index_response
        )
        self._repository_load_rpc = rpc(
            wire_messages.REPOSITORY_MODEL_LOAD_METHOD, wire_messages.parse_empty_response
        )
        self._repository_unload_rpc = rpc(
            wire_messages.REPOSITORY_MODEL_UNLOAD_METHOD, wire_messages.parse_empty_response
        )

    # --- the unary calls, built once for both client kinds ---------------------------------

    def _health_call(self, service: str, timeout_s: float | None) -> UnaryCall:
        return UnaryCall(
            self._health_rpc,
            health_request(service),
            remaining_s(self._deadline(timeout_s)),
            serving_status_from_response,
        )

    def _model_metadata_call(
        self, model: str | None, model_version: str | None, timeout_s: float | None
    ) -> UnaryCall:
        target = self._model_metadata_target(model, model_version)
        return UnaryCall(
            self._model_metadata_rpc,
            model_metadata_request(target.name, target.version),
            remaining_s(self._deadline(timeout_s)),
            model_metadata_from_response,
        )

    def _models_call(self, ready_only: bool, timeout_s: float | None) -> UnaryCall:
        return UnaryCall(
            self._repository_index_rpc,
            repository_index_request(ready_only),
            remaining_s(self._deadline(timeout_s)),
            repository_models_from_response,
        )

    def _load_call(self, model: str, timeout_s: float | None) -> UnaryCall:
        return UnaryCall(
            self._repository_load_rpc,
            repository_model_request(model),
            remaining_s(self._deadline(timeout_s)),
            _ignore_reply,
        )

    def _unload_call(self, model: str, timeout_s: float | None) -> UnaryCall:
        return UnaryCall(
            self._repository_unload_rpc,
            repository_model_request(model),
            remaining_s(self._deadline(timeout_s)),
            _ignore_reply,
        )
        raise NotImplementedError

    @property
    def settings(self) -> ClientSettings:
        return self._settings

    @property
    def target(self) -> str:
        return self._settings.target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings.target!r})"

    def _model_target(self, model: str | None, model_version: str | None) -> ModelTarget:
        """The (model, version) a call asks for: the call's own, else the client's defaults.

        `model=None` means the client's `model_name`; `model_version=None` means the client's
        `model_version` for the client's own model, and the latest version ("") for any
        other model: a version number belongs to one model. "" asks for the server's
        default model, or its latest version.
        """
        for argument, value in (("model", model), ("model_version", model_version)):
            if value is not None and not isinstance(value, str):
                raise InvalidInputError(f"{argument} must be a string or None, got {value!r}")
        settings = self._settings
        if model is None or model == settings.model_name:
            version = settings.model_version if model_version is None else model_version
            return ModelTarget(settings.model_name, version)
        return ModelTarget(model, model_version or "")

    def _classify_requests(
        self, images: ImagesInput, top_k: int | None, target: ModelTarget
    ) -> list[classifier_pb2.ClassifyRequest]:
        checked_top_k = _checked_top_k(top_k)
        wire_images = encode_images(images)
        return [
            self._request(chunk, checked_top_k, "", target)
            for chunk in split_requests(wire_images, self._settings.max_images_per_request)
        ]

    def _one_request(
        self, image: ImageInput, top_k: int | None, target: ModelTarget
    ) -> classifier_pb2.ClassifyRequest:
        return self._request([encode_single_image(image)], _checked_top_k(top_k), "", target)

    def _request(
        self,
        images: list[classifier_pb2.Image],
        top_k: int,
        request_id: str,
        target: ModelTarget,
    ) -> classifier_pb2.ClassifyRequest:
        # `top_k` already checked: 0 asks for no top-k list.
        return classifier_pb2.ClassifyRequest(
            images=images,
            model_name=target.name,
            model_version=target.version,
            top_k=top_k,
            request_id=request_id,
        )

    def _model_metadata_target(self, model: str | None, model_version: str | None) -> ModelTarget:
        # ModelMetadata needs a model name: the server's default is "mnist".
        target = self._model_target(model, model_version)
        return ModelTarget(target.name or DEFAULT_MODEL_NAME, target.version)

    def _deadline(self, timeout_s: float | None) -> float:
        return time.monotonic() + (self._settings.timeout_s if timeout_s is None else timeout_s)

    def _stream_timeout(self, timeout_s: float | None) -> float | None:
        return self._settings.stream_timeout_s if timeout_s is None else timeout_s

    def _check_open(self) -> None:
        if self._closed:
            raise MnistServingError(f"{self!r} is closed")

    @property
    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
        """The gRPC headers every call carries (the bearer token, and the caller's trace
        context when opentelemetry-api is installed: tracing.py), not model metadata."""
        return self._settings.call_metadata() + trace_metadata()


class StreamRequestBuilder:
    """Groups a stream's images into requests of `images_per_request`, numbering them."""

    def __init__(
        self,
        client: ClientBase,
        top_k: int | None,
        images_per_request: int,
        target: ModelTarget,
    ) -> None:
        if images_per_request < 1:
            raise ValueError(f"images_per_request must be >= 1, got {images_per_request}")
        self._client = client
        self._target = target
        self._top_k = _checked_top_k(top_k)
        self._images_per_request = images_per_request
        self._chunk: list[classifier_pb2.Image] = []
        self._sequence = 0

    def add(
        self, image: ImageInput
    ) -> tuple[PendingRequest, classifier_pb2.ClassifyRequest] | None:
        """Add one image; returns a full request when one is ready."""
        self._chunk.append(encode_single_image(image))
        if len(self._chunk) >= self._images_per_request:
            return self.flush()
        return None

    def flush(self) -> tuple[PendingRequest, classifier_pb2.ClassifyRequest] | None:
        """The request holding the images added since the last one, if any."""
        if not self._chunk:
            return None
        request_id = str(self._sequence)
        request = self._client._request(self._chunk, self._top_k, request_id, self._target)
        pending = PendingRequest(request_id, len(self._chunk))
        self._chunk, self._sequence = [], self._sequence + 1
        return pending, request


def remaining_s(deadline: float) -> float:
    """Seconds left before `deadline`; raises DeadlineExceededError when none are left."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceededError(
            "the call's deadline passed before all requests were sent",
            grpc.StatusCode.DEADLINE_EXCEEDED,
        )
    return left


def stream_predictions(
    response: classifier_pb2.ClassifyResponse, pending: PendingRequest
) -> list[Prediction]:
    """The predictions of one stream reply, checking it answers the expected request."""
    if response.request_id != pending.request_id:
        raise MnistServingError(
            f"stream reply for request {response.request_id!r} arrived while waiting for "
            f"{pending.request_id!r}: the server broke the reply order"
        )
    if response.HasField("error") and response.error.code != 0:
        raise error_for_status_number(response.error.code, response.error.message)
    return predictions_from_response(response, pending.image_count)


def _checked_top_k(top_k: int | None) -> int:
    if top_k is None:
        return 0
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= NUM_CLASSES:
        raise InvalidInputError(
            f"top_k must be an integer in 1..{NUM_CLASSES} or None, got {top_k!r}"
        )
    return top_k
