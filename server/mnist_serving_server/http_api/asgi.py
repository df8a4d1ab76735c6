"""The KServe V2 REST API (with Triton's extensions) and the static page, as one raw ASGI app.

As thin as a gRPC servicer: parse the path, read a bounded body, call the DataPlane, answer
JSON (orjson). Tensors go through `v2_json` and `core.tensors`; every error through
`http_errors` (each error kind carries its status); every request is counted once in
`mnist_serving_requests_total{protocol="http"}` with the gRPC method name of the same
operation. No framework router: one dict lookup and a split of the path per request.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any, Final

import orjson

from mnist_serving_server.core import tracing
from mnist_serving_server.core.dataplane import DataPlane
from mnist_serving_server.core.drain import SHUTTING_DOWN
from mnist_serving_server.core.errors import (
    OK,
    ClientClosedError,
    InvalidInputError,
    MethodNotAllowedError,
    NoSuchEndpointError,
    NotReadyError,
    PayloadTooLargeError,
    UnauthenticatedError,
)
from mnist_serving_server.core.inference import RequestLimits
from mnist_serving_server.core.model_config import PLATFORM
from mnist_serving_server.core.server_info import HTTP_EXTENSIONS, SERVER_NAME, server_version
from mnist_serving_server.core.tokens import (
    REASON_UNAUTHENTICATED,
    UNAUTHENTICATED_DETAILS,
    BearerTokens,
)
from mnist_serving_server.core.triton_records import model_config_record
from mnist_serving_server.http_api import v2_json
from mnist_serving_server.http_api.http_errors import Headers, failure_for
from mnist_serving_server.http_api.http_spans import HttpSpan
from mnist_serving_server.metrics import REASON_NOT_READY, ServerMetrics

logger = logging.getLogger(__name__)

PROTOCOL: Final = "http"
STATIC_DIR: Final = Path(__file__).parent / "static"
INDEX_FILE: Final = "index.html"
JSON_TYPE: Final = b"application/json"
BINARY_TYPE: Final = b"application/octet-stream"
HEADER_LENGTH: Final = b"inference-header-content-length"
STATIC_METHOD: Final = "StaticFile"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
NOT_READY: Final = NotReadyError.status


class Reply:
    """A finished answer: status, body, content type and extra headers."""

    __slots__ = ("body", "code", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        content_type: bytes = JSON_TYPE,
        headers: Headers | None = None,
        code: str = OK.grpc_code,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.code = code
        """The gRPC code name the metrics record (an error's comes with its kind)."""


class Call:
    """One request being handled: what the metrics record about it, and its span (None
    while tracing is off)."""

    __slots__ = ("method", "model", "traced", "version")

    def __init__(self, method: str, traced: HttpSpan | None = None) -> None:
        self.method = method
        self.model = ""
        self.version = ""
        self.traced = traced


def _json(status: int, value: Any) -> Reply:
    return Reply(status, orjson.dumps(value))


def _error_reply(exc: BaseException) -> Reply:
    """The answer to any exception, from its kind's status (http_errors)."""
    failure = failure_for(exc)
    return Reply(failure.status, failure.body, headers=failure.headers or None, code=failure.code)


def _not_ready(value: Any) -> Reply:
    """A readiness probe's "no": counted like any not-ready answer."""
    return Reply(NOT_READY.http_status, orjson.dumps(value), code=NOT_READY.grpc_code)


class V2HttpApp:
    """The ASGI application. `ready()` is the server's readiness (health and dataplane)."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: ServerMetrics,
        *,
        ready: Callable[[], bool],
        max_images_per_request: int,
        max_decoded_pixels: int,
        max_body_bytes: int,
        tokens: BearerTokens | None = None,
        health_exempt: bool = True,
    ) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._ready = ready
        self._limits = RequestLimits(max_images_per_request, max_decoded_pixels)
        self._max_body = max_body_bytes
        self._tokens = tokens
        self._health_exempt = health_exempt
        self.refusing = False
        """Set when the server stops taking requests: new ones get 503 + Connection: close."""
        self.inflight = 0
        self.last_refusal_at = 0.0
        """loop time of the last request refused while stopping (the drain waits for quiet)."""
        self._server_metadata = orjson.dumps(
            {"name": SERVER_NAME, "version": server_version(), "extensions": HTTP_EXTENSIONS}
        )

    # --- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        started = time.perf_counter()
        call: Call | None = None
        traced: HttpSpan | None = None
        close = False
        self.inflight += 1
        try:
            route = self._route(scope["method"], scope["path"])
            active = tracing.tracer
            if active is not None:
                traced = HttpSpan(active, scope, None if route is None else route[0])
            if route is None:
                reply = _error_reply(
                    NoSuchEndpointError(f"no such endpoint: {scope['method']} {scope['path']}")
                )
            else:
                method, handler, args, exempt = route
                call = Call(method, traced)
                if self.refusing:
                    close = True
                    self.last_refusal_at = asyncio.get_running_loop().time()
                    reply = _error_reply(NotReadyError(SHUTTING_DOWN))
                elif (
                    self._tokens is not None
                    and not exempt
                    and not self._tokens.matches(_header(scope, b"authorization"))
                ):
                    self._metrics.on_rejected(REASON_UNAUTHENTICATED)
                    reply = _error_reply(UnauthenticatedError(UNAUTHENTICATED_DETAILS))
                elif traced is None:
                    try:
                        reply = await handler(scope, receive, call, *args)
                    except Exception as exc:
                        reply = _error_reply(exc)
                else:
                    reply = await _traced_handler(traced, handler, scope, receive, call, args)
        finally:
            self.inflight -= 1
        if call is not None:
            if reply.code == NOT_READY.grpc_code:  # as over gRPC (call_metrics)
                self._metrics.on_rejected(REASON_NOT_READY)
            self._metrics.count_request(
                PROTOCOL,
                call.method,
                call.model,
                call.version,
                reply.code,
                time.perf_counter() - started,
            )
        headers: Headers = [
            (b"content-type", reply.content_type),
            (b"content-length", str(len(reply.body)).encode()),
        ]
        if reply.headers:
            headers.extend(reply.headers)
        if close:
            headers.append((b"connection", b"close"))
        if traced is None:
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
            return
        traced.add_traceparent(headers)
        try:
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
        finally:
            model, version = ("", "") if call is None else (call.model, call.version)
            traced.end(reply.status, reply.code, model, version)

    # --- routing --------------------------------------------------------------------------

    def _route(
        self, method: str, path: str
    ) -> tuple[str, Callable[..., Awaitable[Reply]], tuple[str, ...], bool] | None:
        """(metric method name, handler, path arguments, auth-exempt) or None (no endpoint)."""
        parts = path.split("/")
        # "/v2/models/m/infer" -> ["", "v2", "models", "m", "infer"]
        if len(parts) < 2 or parts[0] != "":
            return None
        head = parts[1]
        if head != "v2":
            if method != "GET":
                return None
            if path == "/":
                return STATIC_METHOD, self._static, (INDEX_FILE,), True
            if head == "static" and len(parts) == 3:
                return STATIC_METHOD, self._static, (parts[2],), True
            return None
        rest = parts[2:]
        if not rest or rest == [""]:
            return self._only(method, "GET", ("ServerMetadata", self._server_meta, (), False))
        kind = rest[0]
        if kind == "health" and len(rest) == 2:
            exempt = self._health_exempt
            if rest[1] == "live":
                return self._only(method, "GET", ("ServerLive", self._live, (), exempt))
            if rest[1] == "ready":
                return self._only(method, "GET", ("ServerReady", self._server_ready, (), exempt))
            return None
        if kind == "repository":
            if rest[1:] == ["index"]:
                return self._only(method, "POST", ("RepositoryIndex", self._index, (), False))
            if len(rest) == 4 and rest[1] == "models" and rest[3] in ("load", "unload"):
                if rest[3] == "load":
                    entry = ("RepositoryModelLoad", self._load, (rest[2],), False)
                else:
                    entry = ("RepositoryModelUnload", self._unload, (rest[2],), False)
                return self._only(method, "POST", entry)
            return None
        if kind != "models" or len(rest) < 2:
            return None
        if rest[1:] == ["stats"]:
            return self._only(method, "GET", ("ModelStatistics", self._stats, ("", ""), False))
        name = rest[1]
        version = ""
        tail = rest[2:]
        if len(tail) >= 2 and tail[0] == "versions":
            version = tail[1]
            tail = tail[2:]
        if not tail:
            return self._only(
                method, "GET", ("ModelMetadata", self._model_meta, (name, version), False)
            )
        if len(tail) != 1:
            return None
        action = tail[0]
        if action == "infer":
            return self._only(method, "POST", ("ModelInfer", self._infer, (name, version), False))
        if action == "ready":
            return self._only(
                method, "GET", ("ModelReady", self._model_ready, (name, version), False)
            )
        if action == "config":
            return self._only(method, "GET", ("ModelConfig", self._config, (name, version), False))
        if action == "stats":
            return self._only(
                method, "GET", ("ModelStatistics", self._stats, (name, version), False)
            )
        return None

    def _only(
        self,
        method: str,
        allowed: str,
        entry: tuple[str, Callable[..., Awaitable[Reply]], tuple[str, ...], bool],
    ) -> tuple[str, Callable[..., Awaitable[Reply]], tuple[str, ...], bool]:
        if method == allowed:
            return entry
        return entry[0], _method_not_allowed(allowed), (), entry[3]

    # --- bodies ---------------------------------------------------------------------------

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole request body, refused with 413 as soon as it passes the limit."""
        limit = self._max_body
        declared = _header(scope, b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise InvalidInputError("Content-Length is not a number") from None
            if length > limit:
                raise PayloadTooLargeError(_too_large(length, limit))
        message = await receive()
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            if len(body) > limit:
                raise PayloadTooLargeError(_too_large(len(body), limit))
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientClosedError("the client closed the connection")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # streamed without Content-Length: stop reading here
                raise PayloadTooLargeError(_too_large(size, limit))
            chunks.append(chunk)
        return b"".join(chunks)

    async def _json_body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        body = await self._body(scope, receive)
        if not body.strip():
            return {}
        value = v2_json.parse_json(body)
        if not isinstance(value, dict):
            raise InvalidInputError("the request body must be a JSON object")
        return value

    # --- health and metadata ----------------------------------------------------------------

    async def _live(self, scope: Scope, receive: Receive, call: Call) -> Reply:
        return Reply(200, b'{"live":true}')

    async def _server_ready(self, scope: Scope, receive: Receive, call: Call) -> Reply:
        if self._ready():
            return Reply(200, b'{"ready":true}')
        return _not_ready({"ready": False})

    async def _server_meta(self, scope: Scope, receive: Receive, call: Call) -> Reply:
        return Reply(200, self._server_metadata)

    async def _model_ready(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        ready = self._dataplane.model_ready(name, version)
        answer = {"name": name, "ready": ready}
        return _json(200, answer) if ready else _not_ready(answer)

    def _resolve(self, call: Call, name: str, version: str) -> Any:
        served = self._dataplane.model(name, version)
        call.model = served.name
        call.version = served.version
        return served

    async def _model_meta(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        info = self._resolve(call, name, version).info
        versions = self._dataplane.versions(info.name)
        return _json(
            200,
            {
                "name": info.name,
                "versions": versions,
                "platform": PLATFORM,
                "inputs": [_tensor_meta(spec) for spec in info.inputs],
                "outputs": [_tensor_meta(spec) for spec in info.outputs],
            },
        )

    async def _config(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        self._resolve(call, name, version)
        config, served = self._dataplane.model_config(name)
        return _json(200, model_config_record(config, served.info))

    async def _stats(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        records = await self._dataplane.statistics(name, version)
        if name:
            call.model = records[0]["name"] if records else ""
        return _json(200, {"model_stats": records})

    # --- the repository extension -------------------------------------------------------------

    async def _index(self, scope: Scope, receive: Receive, call: Call) -> Reply:
        request = await self._json_body(scope, receive)
        ready_only = request.get("ready", False)
        if not isinstance(ready_only, bool):
            raise InvalidInputError("`ready` must be a boolean")
        entries = await self._dataplane.index(ready_only=ready_only)
        return _json(
            200,
            [
                {"name": e.name, "version": e.version, "state": e.state.value, "reason": e.reason}
                for e in entries
            ],
        )

    async def _load(self, scope: Scope, receive: Receive, call: Call, name: str) -> Reply:
        await self._json_body(scope, receive)
        call.model = name if self._dataplane.in_repository(name) else ""
        await self._dataplane.load(name)
        return Reply(200, b"")

    async def _unload(self, scope: Scope, receive: Receive, call: Call, name: str) -> Reply:
        await self._json_body(scope, receive)
        call.model = name if self._dataplane.in_repository(name) else ""
        await self._dataplane.unload(name)
        return Reply(200, b"")

    # --- inference ----------------------------------------------------------------------------

    async def _infer(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        body = await self._body(scope, receive)
        parsed = v2_json.parse_infer_request(body, _header(scope, HEADER_LENGTH), name, version)
        request = parsed.request
        if call.traced is not None:
            call.traced.trace_request(request)
        try:
            response = await self._dataplane.infer_request(request, self._limits)
        finally:
            call.model = request.resolved_model
            call.version = request.resolved_version
        payload, json_length = v2_json.encode_response(response, parsed.binary_output)
        if json_length is None:
            return Reply(200, payload)
        return Reply(
            200,
            payload,
            BINARY_TYPE,
            [(b"inference-header-content-length", str(json_length).encode())],
        )

    # --- static files --------------------------------------------------------------------------

    async def _static(self, scope: Scope, receive: Receive, call: Call, filename: str) -> Reply:
        if (
            not filename
            or filename.startswith(".")
            or "/" in filename
            or "\\" in filename
            or "\x00" in filename
        ):
            raise NoSuchEndpointError("no such file")
        path = STATIC_DIR / filename
        try:
            if path.resolve().parent != STATIC_DIR.resolve() or not path.is_file():
                raise NoSuchEndpointError("no such file")
            content = path.read_bytes()
        except OSError:
            raise NoSuchEndpointError("no such file") from None
        kind, _ = mimetypes.guess_type(filename)
        content_type = (kind or "application/octet-stream").encode()
        if content_type.startswith(b"text/") or content_type == b"application/javascript":
            content_type += b"; charset=utf-8"
        return Reply(
            200,
            content,
            content_type,
            [(b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff")],
        )


async def _traced_handler(
    traced: HttpSpan,
    handler: Callable[..., Awaitable[Reply]],
    scope: Scope,
    receive: Receive,
    call: Call,
    args: tuple[str, ...],
) -> Reply:
    """`handler`'s reply, its span the current one meanwhile (log lines carry its trace id);
    an exception is answered as always, and its kind kept for the span."""
    with tracing.current_span(traced.span):
        try:
            return await handler(scope, receive, call, *args)
        except Exception as exc:
            traced.error = tracing.error_kind(exc)
            return _error_reply(exc)


def _method_not_allowed(allowed: str) -> Callable[..., Awaitable[Reply]]:
    async def handler(scope: Scope, receive: Receive, call: Call) -> Reply:
        raise MethodNotAllowedError(f"method {scope['method']} not allowed; use {allowed}", allowed)

    return handler


def _tensor_meta(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _too_large(size: int, limit: int) -> str:
    return (
        f"the request body is {size} bytes; this server takes at most {limit} "
        "(--max-message-bytes): split the request"
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


__all__ = ["PROTOCOL", "STATIC_DIR", "V2HttpApp"]
