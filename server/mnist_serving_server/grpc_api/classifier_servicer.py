"""`mnist_serving.v1.Classifier`: Classify and ClassifyStream.

Thin on purpose: protobuf -> one uint8 [n, *image shape] array (the shape the model's graph
declares) -> `DataPlane.infer` -> protobuf. Validation errors are `InvalidInputError`s naming
the field and what was expected; `grpc_errors` turns every exception into a status.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from grpc import aio

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_server.core import tracing
from mnist_serving_server.core.classifier import PROBABILITIES_OUTPUT, ClassifierContract
from mnist_serving_server.core.dataplane import DataPlane
from mnist_serving_server.core.decoding import decode_off_loop
from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.core.registry import ServedVersion
from mnist_serving_server.core.tensors import encoded_image
from mnist_serving_server.grpc_api.call_metrics import RequestRecord, track_request
from mnist_serving_server.grpc_api.grpc_errors import abort_with, status_code_number, status_for
from mnist_serving_server.grpc_api.ordered_stream import replies_in_order
from mnist_serving_server.metrics import ServerMetrics

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

ServicerContext = aio.ServicerContext[
    classifier_pb2.ClassifyRequest, classifier_pb2.ClassifyResponse
]


def request_pixels(
    images: Sequence[classifier_pb2.Image],
    contract: ClassifierContract,
    *,
    max_images: int,
    max_decoded_pixels: int,
) -> npt.NDArray[np.uint8]:
    """The request's images as one uint8 [n, *image_shape] array (raw pixels copied once).

    Raises InvalidInputError for an empty request, too many images, a raw image of the
    wrong length, an image with no data, or an encoded image that cannot be used.
    """
    image_bytes = math.prod(contract.image_shape)
    count = len(images)
    if count == 0:
        raise InvalidInputError(
            "the request has no images: set `images` to one or more Image messages "
            f"(`pixels`: {image_bytes} raw bytes, or `encoded`: a PNG/JPEG)"
        )
    if count > max_images:
        raise InvalidInputError(
            f"the request has {count} images; this server takes at most {max_images} per "
            "request (max_images_per_request): split it into several requests"
        )
    raw: list[bytes] = []
    for index, image in enumerate(images):
        kind = image.WhichOneof("data")
        if kind != "pixels":
            break
        if len(image.pixels) != image_bytes:
            raise _wrong_size(index, len(image.pixels), contract)
        raw.append(image.pixels)
    else:  # every image is raw pixels: the common, fast path, one join and no other copy
        data = raw[0] if count == 1 else b"".join(raw)
        return np.frombuffer(data, dtype=np.uint8).reshape(count, *contract.image_shape)
    return _mixed_pixels(images, contract, max_decoded_pixels=max_decoded_pixels)


def _mixed_pixels(
    images: Sequence[classifier_pb2.Image],
    contract: ClassifierContract,
    *,
    max_decoded_pixels: int,
) -> npt.NDArray[np.uint8]:
    image_bytes = math.prod(contract.image_shape)
    pixels = np.empty((len(images), image_bytes), dtype=np.uint8)
    for index, image in enumerate(images):
        kind = image.WhichOneof("data")
        if kind == "pixels":
            if len(image.pixels) != image_bytes:
                raise _wrong_size(index, len(image.pixels), contract)
            pixels[index] = np.frombuffer(image.pixels, dtype=np.uint8)
        elif kind == "encoded":
            pixels[index] = encoded_image(
                image.encoded,
                contract.image_shape,
                max_decoded_pixels=max_decoded_pixels,
                where=f"images[{index}].encoded",
            )
        else:
            raise InvalidInputError(
                f"images[{index}] has no data: set `pixels` ({image_bytes} raw bytes) "
                "or `encoded` (a PNG/JPEG)"
            )
    return pixels.reshape(len(images), *contract.image_shape)


def _wrong_size(index: int, size: int, contract: ClassifierContract) -> InvalidInputError:
    height, width = contract.image_shape[-2:]
    return InvalidInputError(
        f"images[{index}].pixels has {size} bytes; expected {height * width} "
        f"({height}x{width} uint8, row-major)"
    )


def deadline_of(context: ServicerContext) -> float | None:
    """The call's gRPC deadline as an absolute `time.monotonic()` value (None: no deadline)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    """Classify and ClassifyStream over the DataPlane (shared with KServe V2)."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: ServerMetrics,
        *,
        max_images_per_request: int,
        max_decoded_pixels: int,
    ) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._max_images = max_images_per_request
        self._max_decoded_pixels = max_decoded_pixels

    async def Classify(  # noqa: N802 - the gRPC method name
        self, request: classifier_pb2.ClassifyRequest, context: ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        with track_request(self._metrics, "Classify", context) as record:
            try:
                return await self._classify(request, deadline_of(context), record)
            except Exception as exc:
                await abort_with(context, exc, record)

    async def ClassifyStream(  # noqa: N802 - the gRPC method name
        self,
        request_iterator: AsyncIterator[classifier_pb2.ClassifyRequest],
        context: ServicerContext,
    ) -> AsyncIterator[classifier_pb2.ClassifyResponse]:
        """Requests are handled concurrently (up to STREAM_WINDOW); replies keep their order.
        Traced, each request's queue and batch spans belong to the stream's span."""
        with track_request(self._metrics, "ClassifyStream", context, current=False) as record:
            deadline = deadline_of(context)
            trace = record.span_context

            def answer(
                request: classifier_pb2.ClassifyRequest,
            ) -> Awaitable[classifier_pb2.ClassifyResponse]:
                return self._classify_stream_item(request, deadline, trace)

            async for reply in replies_in_order(request_iterator, answer):
                yield reply

    async def _classify_stream_item(
        self,
        request: classifier_pb2.ClassifyRequest,
        deadline: float | None,
        trace: SpanContext | None,
    ) -> classifier_pb2.ClassifyResponse:
        try:
            return await self._classify(request, deadline, None, trace)
        except Exception as exc:
            code, message = status_for(exc)
            return classifier_pb2.ClassifyResponse(
                request_id=request.request_id,
                error=classifier_pb2.Error(code=status_code_number(code), message=message),
            )

    async def _classify(
        self,
        request: classifier_pb2.ClassifyRequest,
        deadline: float | None,
        record: RequestRecord | None,
        stream_trace: SpanContext | None = None,
    ) -> classifier_pb2.ClassifyResponse:
        """One request; `record` for a unary call, `stream_trace` for a stream's request."""
        served, contract = self._dataplane.classifier(request.model_name, request.model_version)
        trace = stream_trace
        if record is not None:
            record.model = served.name
            record.version = served.version
            if record.span is not None:
                trace = record.trace_call(request.request_id, len(request.images))
        pixels = partial(
            classify_pixels,
            request,
            contract,
            max_images=self._max_images,
            max_decoded_pixels=self._max_decoded_pixels,
            trace=trace,
        )
        if has_encoded_images(request):  # decoded off the loop, then resolved again
            decoded = await decode_off_loop(pixels)
            served = self._dataplane.decoded_for(request.model_name, request.model_version, served)
            if record is not None:
                record.version = served.version
            outputs = await self._dataplane.infer(served, decoded, deadline=deadline, trace=trace)
        else:
            outputs = await self._dataplane.infer(served, pixels(), deadline=deadline, trace=trace)
        return classify_response(request, served, outputs)


def classify_pixels(
    request: classifier_pb2.ClassifyRequest,
    contract: ClassifierContract,
    *,
    max_images: int,
    max_decoded_pixels: int,
    trace: SpanContext | None = None,
) -> npt.NDArray[np.uint8]:
    """The request's images as the model's array, once `top_k` is known to fit (both gRPC
    fronts' Classify: this servicer and the native front). `trace`: the call's span when it
    is traced (RequestRecord.trace_call): a decode span then covers PNG/JPEG decoding."""
    if request.top_k > contract.num_classes:
        raise InvalidInputError(
            f"top_k is {request.top_k}; at most {contract.num_classes} (the number of classes)"
        )
    images = request.images
    if trace is not None and has_encoded_images(request):
        return tracing.in_span(
            tracing.DECODE_SPAN,
            trace,
            lambda: request_pixels(
                images, contract, max_images=max_images, max_decoded_pixels=max_decoded_pixels
            ),
        )
    return request_pixels(
        images, contract, max_images=max_images, max_decoded_pixels=max_decoded_pixels
    )


def has_encoded_images(request: classifier_pb2.ClassifyRequest) -> bool:
    """Whether any image is a PNG/JPEG (decoded on the decoder thread, core.decoding)."""
    return any(image.WhichOneof("data") == "encoded" for image in request.images)


def classify_response(
    request: classifier_pb2.ClassifyRequest,
    served: ServedVersion,
    outputs: Mapping[str, npt.NDArray[np.float32]],
) -> classifier_pb2.ClassifyResponse:
    return classifier_pb2.ClassifyResponse(
        predictions=predictions(outputs[PROBABILITIES_OUTPUT], request.top_k, served.info.labels),
        model_name=served.name,
        model_version=served.version,
        request_id=request.request_id,
    )


def predictions(
    probabilities: npt.NDArray[np.float32], top_k: int, class_names: Sequence[str]
) -> list[classifier_pb2.Prediction]:
    """One Prediction per row of [n, classes] probabilities; top_k (0 = none) per row.

    `class_names` are the model's labels; () leaves `class_name` empty.
    """

    def name_of(index: int) -> str:
        return class_names[index] if index < len(class_names) else ""

    labels = probabilities.argmax(axis=1)
    rows = probabilities.tolist()  # one conversion for the whole batch, not per element
    result: list[classifier_pb2.Prediction] = []
    if top_k:
        # Stable sort on -p: ties keep the lower class first, so replies are deterministic.
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :top_k].tolist()
    for row_index, (label, row) in enumerate(zip(labels.tolist(), rows, strict=True)):
        prediction = classifier_pb2.Prediction(
            label=label, probability=row[label], probabilities=row, class_name=name_of(label)
        )
        if top_k:
            prediction.top_k.extend(
                classifier_pb2.ClassScore(label=cls, probability=row[cls], class_name=name_of(cls))
                for cls in ranked[row_index]
            )
        result.append(prediction)
    return result
