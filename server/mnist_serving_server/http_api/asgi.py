"""The KServe V2 REST API (with Triton's extensions) and the static page, as one raw ASGI app.

This module is the envelope around every request: find its route (routes.py, one table),
refuse it while the server stops (503 + Connection: close) or without a valid bearer
token, run the route's handler (handlers.py), answer any exception from its kind
(`http_errors`: each error kind carries its status), count it once in
`mnist_serving_requests_total{protocol="http"}` with the gRPC method name of the same
operation, and open and end its span (http_spans.py) while tracing is on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from mnist_serving_server.core import tracing
from mnist_serving_server.core.dataplane import DataPlane
from mnist_serving_server.core.drain import SHUTTING_DOWN
from mnist_serving_server.core.errors import (
    MethodNotAllowedError,
    NoSuchEndpointError,
    NotReadyError,
    UnauthenticatedError,
)
from mnist_serving_server.core.inference import RequestLimits
from mnist_serving_server.core.tokens import (
    REASON_UNAUTHENTICATED,
    UNAUTHENTICATED_DETAILS,
    BearerTokens,
)
from mnist_serving_server.http_api import routes
from mnist_serving_server.http_api.handlers import (
    JSON_TYPE,
    NOT_READY,
    Call,
    Handler,
    Receive,
    Reply,
    Scope,
    V2Handlers,
    header,
)
from mnist_serving_server.http_api.http_errors import Headers, failure_for
from mnist_serving_server.http_api.http_spans import HttpSpan
from mnist_serving_server.metrics import REASON_NOT_READY, ServerMetrics

PROTOCOL: Final = "http"

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


def _error_reply(exc: BaseException) -> Reply:
    """The answer to any exception, from its kind's status (http_errors)."""
    failure = failure_for(exc)
    return Reply(failure.status, failure.body, headers=failure.headers or None, code=failure.code)


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
        self._metrics = metrics
        self._tokens = tokens
        handlers = V2Handlers(
            dataplane,
            ready=ready,
            limits=RequestLimits(max_images_per_request, max_decoded_pixels),
            max_body_bytes=max_body_bytes,
        )
        # By route (routes.ROUTES' order): its handler, and whether it needs no token.
        self._routes: tuple[tuple[Handler, bool], ...] = tuple(
            (getattr(handlers, route.handler), _exempt(route.auth, health_exempt))
            for route in routes.ROUTES
        )
        self.refusing = False
        """Set when the server stops taking requests: new ones get 503 + Connection: close."""
        self.inflight = 0
        self.last_refusal_at = 0.0
        """loop time of the last request refused while stopping (the drain waits for quiet)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is off; websockets are not served
        started = time.perf_counter()
        method = scope["method"]
        call: Call | None = None
        traced: HttpSpan | None = None
        close = False
        self.inflight += 1
        try:
            found = routes.match(method, scope["path"])
            active = tracing.tracer
            if active is not None:
                traced = HttpSpan(active, scope, None if found is None else found[0].template)
            if found is None:
                reply = _error_reply(
                    NoSuchEndpointError(f"no such endpoint: {method} {scope['path']}")
                )
            else:
                route, name, version = found
                handler, exempt = self._routes[route.index]
                call = Call(route.operation, traced)
                if self.refusing:
                    close = True
                    self.last_refusal_at = asyncio.get_running_loop().time()
                    reply = _error_reply(NotReadyError(SHUTTING_DOWN))
                elif (
                    self._tokens is not None
                    and not exempt
                    and not self._tokens.matches(header(scope, b"authorization"))
                ):
                    self._metrics.on_rejected(REASON_UNAUTHENTICATED)
                    reply = _error_reply(UnauthenticatedError(UNAUTHENTICATED_DETAILS))
                else:
                    if method != route.method:
                        handler = _method_not_allowed(route.method)
                    if traced is None:
                        try:
                            reply = await handler(scope, receive, call, name, version)
                        except Exception as exc:
                            reply = _error_reply(exc)
                    else:
                        reply = await _traced(traced, handler, scope, receive, call, name, version)
        finally:
            self.inflight -= 1
        await self._respond(send, reply, started, call, traced, close)

    async def _respond(
        self,
        send: Send,
        reply: Reply,
        started: float,
        call: Call | None,
        traced: HttpSpan | None,
        close: bool,
    ) -> None:
        """Count the request (when it had a route), then send `reply` and end the span."""
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


async def _traced(
    traced: HttpSpan,
    handler: Handler,
    scope: Scope,
    receive: Receive,
    call: Call,
    name: str,
    version: str,
) -> Reply:
    """`handler`'s reply, its span the current one meanwhile (log lines carry its trace id);
    an exception is answered as always, and its kind kept for the span."""
    with tracing.current_span(traced.span):
        try:
            return await handler(scope, receive, call, name, version)
        except Exception as exc:
            traced.error = tracing.error_kind(exc)
            return _error_reply(exc)


def _method_not_allowed(allowed: str) -> Handler:
    async def handler(scope: Scope, receive: Receive, call: Call, name: str, version: str) -> Reply:
        raise MethodNotAllowedError(f"method {scope['method']} not allowed; use {allowed}", allowed)

    return handler


def _exempt(auth: routes.Auth, health_exempt: bool) -> bool:
    """Whether a route of this kind is answered without a token."""
    if auth is routes.Auth.HEALTH:
        return health_exempt
    return auth is routes.Auth.NEVER


__all__ = ["JSON_TYPE", "PROTOCOL", "V2HttpApp"]
