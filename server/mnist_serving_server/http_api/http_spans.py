"""The HTTP front's server spans, as OpenTelemetry's HTTP semantic conventions name them.

One `HttpSpan` per request while tracing is on (the ASGI app makes none while it is off):
span `<METHOD> <route template>` (e.g. `POST /v2/models/{model_name}/infer`), kind SERVER,
a child of the caller's `traceparent`/`tracestate` headers when it sent them, with
`http.request.method`, `http.route`, `url.path`, `url.scheme` and
`http.response.status_code`, plus the model, version, request id and image count. The
response carries the span's `traceparent` back (as KServe does) when it is sampled.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Final

from mnist_serving_server.core import tracing
from mnist_serving_server.http_api.http_errors import Headers

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, Tracer

    from mnist_serving_server.core.inference import InferenceRequest

HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_PATH: Final = "url.path"
URL_SCHEME: Final = "url.scheme"
TRACEPARENT_HEADER: Final = tracing.TRACEPARENT.encode()
FIRST_ERROR_STATUS: Final = 400


class HttpSpan:
    """One request's server span, from its ASGI scope to the status it was answered with."""

    __slots__ = ("error", "span", "trace")

    def __init__(self, active: Tracer, scope: MutableMapping[str, Any], route: str | None) -> None:
        """`route`: the template of the route the request matched (routes.py), None if none."""
        method = scope["method"]
        path = scope["path"]
        attributes: dict[str, str] = {
            HTTP_REQUEST_METHOD: method,
            URL_PATH: path,
            URL_SCHEME: scope.get("scheme", "http"),
        }
        if route is not None:
            attributes[HTTP_ROUTE] = route
        name = method if route is None else f"{method} {route}"
        self.span = tracing.start_server_span(active, name, scope["headers"], attributes)
        self.trace: SpanContext | None = tracing.sampled_context(self.span)
        """What the core is given (InferenceRequest.trace): None when not sampled."""
        self.error: str | None = None
        """The kind of the exception the request failed with, when one did."""

    def trace_request(self, request: InferenceRequest) -> None:
        """Give the core request the span's context; note its id and image count."""
        request.trace = trace = self.trace
        if trace is None:
            return
        attributes: dict[str, str | int] = {}
        if request.id:
            attributes[tracing.REQUEST_ID] = request.id
        shape = request.input.shape
        if shape and isinstance(shape[0], int):
            attributes[tracing.REQUEST_IMAGES] = shape[0]
        self.span.set_attributes(attributes)

    def add_traceparent(self, headers: Headers) -> None:
        """The response's `traceparent` header, when the span is sampled."""
        if self.trace is not None:
            headers.append((TRACEPARENT_HEADER, tracing.traceparent(self.trace).encode()))

    def end(self, status: int, code: str, model: str, version: str) -> None:
        """End the span: answered with `status` (`code`: its gRPC code name, the error's kind
        when no exception named it), for `model` and `version` ("" when none resolved)."""
        span = self.span
        if self.trace is not None:
            attributes: dict[str, str | int] = {HTTP_RESPONSE_STATUS_CODE: status}
            if model:
                attributes[tracing.MODEL_NAME] = model
                attributes[tracing.MODEL_VERSION] = version
            span.set_attributes(attributes)
            if status >= FIRST_ERROR_STATUS:
                tracing.set_error(span, self.error or code)
        span.end()
