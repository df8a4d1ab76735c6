"""What every API handler goes through before its servicer: the protobuf check and the drain gate.

Left to itself, gRPC answers a request it cannot deserialize with UNKNOWN and the parser's
exception class in the details. Malformed input is INVALID_ARGUMENT (docs/robustness.md),
so every servicer is registered through `add_guarded_servicer`: its deserializers return a
`MalformedMessage` marker instead of raising, and its handlers end the call with
INVALID_ARGUMENT when they meet one. The same wrapper admits calls through the gRPC front's
DrainGate (UNAVAILABLE once shutdown has begun, drain_gate.py) and counts both kinds of
refusal in the request metrics, since the servicer never sees them. Nothing changes for
valid requests except one try/except around the parser, a flag test, a counter and one
extra call frame.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from grpc import aio

from mnist_serving_server.core.drain import SHUTTING_DOWN
from mnist_serving_server.core.errors import InvalidInputError
from mnist_serving_server.grpc_api.call_metrics import PROTOCOL
from mnist_serving_server.grpc_api.drain_gate import DrainGate
from mnist_serving_server.metrics import REASON_NOT_READY, ServerMetrics

Deserializer = Callable[[bytes], Any]
AddServicer = Callable[[Any, Any], None]


class MalformedMessage:
    """What a guarded deserializer returns for bytes that do not parse."""

    __slots__ = ("description",)

    def __init__(self, description: str) -> None:
        self.description = description


def tolerant_deserializer(deserialize: Deserializer) -> Deserializer:
    """`deserialize`, returning a MalformedMessage instead of raising."""

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # protobuf's DecodeError, or anything a parser raises
            return MalformedMessage(
                f"the request is not a valid protobuf message for this method: {exc}"
            )

    return parse


class MalformedRequestError(InvalidInputError):
    """A streamed request did not parse; raised from the request iterator the servicer reads,
    so the servicer unwinds (and counts the call) like for any invalid input."""


class _Guard:
    """What every guarded handler of one method shares: its name, the metrics, the gate."""

    __slots__ = ("gate", "method", "metrics")

    def __init__(self, method: str, metrics: ServerMetrics, gate: DrainGate) -> None:
        self.method = method
        self.metrics = metrics
        self.gate = gate

    async def refuse_if_needed(self, context: aio.ServicerContext[Any, Any], request: Any) -> None:
        """Answer now (and count) a call refused before its servicer runs: draining, or a
        request that did not parse. The servicer counts everything else."""
        gate = self.gate
        if gate.closed:
            started = time.perf_counter()
            try:
                await gate.refuse(context)
            finally:  # counted before the status goes out (also when the caller gave up)
                self._count(grpc.StatusCode.UNAVAILABLE, started)
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)
        if isinstance(request, MalformedMessage):
            self._count(grpc.StatusCode.INVALID_ARGUMENT, time.perf_counter())
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.description)

    def _count(self, code: grpc.StatusCode, started: float) -> None:
        metrics = self.metrics
        if code is grpc.StatusCode.UNAVAILABLE:
            metrics.on_rejected(REASON_NOT_READY)
        metrics.count_request(
            PROTOCOL, self.method, "", "", code.name, time.perf_counter() - started
        )


async def _checked_stream(request_iterator: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in request_iterator:
        if isinstance(request, MalformedMessage):
            raise MalformedRequestError(request.description)
        yield request


def _guard_unary_request(guard: _Guard, behavior: Callable[..., Any]) -> Callable[..., Any]:
    gate = guard.gate

    async def guarded(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await guard.refuse_if_needed(context, request)
        gate.enter()
        try:
            return await behavior(request, context)
        finally:
            gate.leave()

    return guarded


def _guard_stream_request_stream_reply(
    guard: _Guard, behavior: Callable[..., Any]
) -> Callable[..., Any]:
    gate = guard.gate

    async def guarded(request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        await guard.refuse_if_needed(context, None)
        gate.enter()
        try:
            replies = behavior(_checked_stream(request_iterator), context)
            # aclosing: a client that goes away closes the servicer's generator at once.
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    yield reply
        except MalformedRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            gate.leave()

    return guarded


def guard_handler(
    handler: grpc.RpcMethodHandler[Any, Any], method: str, metrics: ServerMetrics, gate: DrainGate
) -> grpc.RpcMethodHandler[Any, Any]:
    """The same method, answering unparseable requests with INVALID_ARGUMENT and, once the
    gate is closed, every new call with UNAVAILABLE; both counted as `method`."""
    if handler.request_deserializer is None:  # generated handlers always have one
        raise TypeError(f"{method}: a handler without a request deserializer cannot be guarded")
    guard = _Guard(method, metrics, gate)
    deserializer = tolerant_deserializer(handler.request_deserializer)
    serializer = handler.response_serializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _guard_unary_request(guard, handler.unary_unary), deserializer, serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            _guard_stream_request_stream_reply(guard, handler.stream_stream),
            deserializer,
            serializer,
        )
    # Our protos have unary-unary and stream-stream methods only; a new shape needs a guard.
    raise TypeError(f"{method}: no guard for this RPC shape (unary-stream or stream-unary)")


class _HandlerCollector:
    """Stands in for the server while a generated `add_XServicer_to_server` runs."""

    def __init__(self) -> None:
        self.service: str | None = None
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        """Ignored: the same handlers arrive by name in add_registered_method_handlers."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.service = service
        self.handlers.update(handlers)


def add_guarded_servicer(
    add_to_server: AddServicer,
    servicer: object,
    server: aio.Server,
    *,
    metrics: ServerMetrics,
    gate: DrainGate,
) -> None:
    """Like `add_to_server(servicer, server)`, with every handler guarded (guard_handler)."""
    collector = _HandlerCollector()
    add_to_server(servicer, collector)
    if collector.service is None or not collector.handlers:
        raise RuntimeError(
            "the generated add_*_to_server registered no named handlers; regenerate the stubs "
            "with grpcio-tools >= 1.63"
        )
    guarded = {
        name: guard_handler(handler, name, metrics, gate)
        for name, handler in collector.handlers.items()
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(collector.service, guarded),)
    )
    server.add_registered_method_handlers(collector.service, guarded)
