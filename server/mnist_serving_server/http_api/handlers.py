"""What each KServe V2 REST route (and Triton's extensions, and the page) answers.

As thin as a gRPC servicer: read a bounded body, call the DataPlane, answer JSON (orjson).
Tensors go through `v2_json` and `core.tensors`. Every handler takes the same arguments
(the ASGI scope and receive, the `Call` being answered, and the model's name and version
from the path, "" where the route has none: routes.py) and returns a `Reply`; an exception
is answered by the app (asgi.py) from its kind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

import orjson

from mnist_serving_server.core.dataplane import DataPlane
from mnist_serving_server.core.errors import (
    OK,
    ClientClosedError,
    InvalidInputError,
    NotReadyError,
    PayloadTooLargeError,
)
from mnist_serving_server.core.inference import RequestLimits
from mnist_serving_server.core.model_config import PLATFORM
from mnist_serving_server.core.server_info import HTTP_EXTENSIONS, SERVER_NAME, server_version
from mnist_serving_server.core.triton_records import model_config_record
from mnist_serving_server.http_api import static_files, v2_json
from mnist_serving_server.http_api.http_errors import Headers
from mnist_serving_server.http_api.http_spans import HttpSpan

JSON_TYPE: Final = b"application/json"
BINARY_TYPE: Final = b"application/octet-stream"
HEADER_LENGTH: Final = b"inference-header-content-length"
NOT_READY: Final = NotReadyError.status
STATIC_HEADERS: Final = ((b"cache-control", b"no-cache"), (b"x-content-type-options", b"nosniff"))

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


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


Handler = Callable[[Scope, Receive, Call, str, str], Awaitable[Reply]]


def _json(status: int, value: Any) -> Reply:
    return Reply(status, orjson.dumps(value))


def _not_ready(value: Any) -> Reply:
    """A readiness probe's "no": counted like any not-ready answer."""
    return Reply(NOT_READY.http_status, orjson.dumps(value), code=NOT_READY.grpc_code)


class V2Handlers:
    """The handlers, by the names routes.py gives them. `ready()` is the server's readiness."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        ready: Callable[[], bool],
        limits: RequestLimits,
        max_body_bytes: int,
    ) -> None:
        self._dataplane = dataplane
        self._ready = ready
        self._limits = limits
        self._max_body = max_body_bytes
        self._server_metadata = orjson.dumps(
            {"name": SERVER_NAME, "version": server_version(), "extensions": HTTP_EXTENSIONS}
        )

    # --- health and metadata ----------------------------------------------------------------

    async def live(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        return Reply(200, b'{"live":true}')

    async def server_ready(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        if self._ready():
            return Reply(200, b'{"ready":true}')
        return _not_ready({"ready": False})

    async def server_metadata(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        return Reply(200, self._server_metadata)

    async def model_ready(
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

    async def model_metadata(
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

    async def model_config(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        self._resolve(call, name, version)
        config, served = self._dataplane.model_config(name)
        return _json(200, model_config_record(config, served.info))

    async def statistics(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        records = await self._dataplane.statistics(name, version)
        if name:
            call.model = records[0]["name"] if records else ""
        return _json(200, {"model_stats": records})

    # --- the repository extension -------------------------------------------------------------

    async def repository_index(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
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

    async def load(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        await self._json_body(scope, receive)
        call.model = name if self._dataplane.in_repository(name) else ""
        await self._dataplane.load(name)
        return Reply(200, b"")

    async def unload(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        await self._json_body(scope, receive)
        call.model = name if self._dataplane.in_repository(name) else ""
        await self._dataplane.unload(name)
        return Reply(200, b"")

    # --- inference ----------------------------------------------------------------------------

    async def infer(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        body = await read_body(scope, receive, self._max_body)
        parsed = v2_json.parse_infer_request(body, header(scope, HEADER_LENGTH), name, version)
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
        return Reply(200, payload, BINARY_TYPE, [(HEADER_LENGTH, str(json_length).encode())])

    # --- the page --------------------------------------------------------------------------------

    async def index_page(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        return await self.static_file(scope, receive, call, static_files.INDEX_FILE, version)

    async def static_file(
        self, scope: Scope, receive: Receive, call: Call, name: str, version: str
    ) -> Reply:
        content, content_type = static_files.read(name)
        return Reply(200, content, content_type, list(STATIC_HEADERS))

    async def _json_body(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        body = await read_body(scope, receive, self._max_body)
        if not body.strip():
            return {}
        value = v2_json.parse_json(body)
        if not isinstance(value, dict):
            raise InvalidInputError("the request body must be a JSON object")
        return value


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = header(scope, b"content-length")
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


def header(scope: Scope, name: bytes) -> str | None:
    """The request header `name` (lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _tensor_meta(spec: Any) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def _too_large(size: int, limit: int) -> str:
    return (
        f"the request body is {size} bytes; this server takes at most {limit} "
        "(--max-message-bytes): split the request"
    )
