"""The native gRPC front: HTTP/2 in Rust (pygrpc-native), outside the GIL; calls in batches.

`NativeFront` binds host:port with pygrpc-native's `NativeGrpcFront`, whose I/O threads do
HTTP/2, flow control, deadlines and cancellation without the GIL. The hot unary method, V2
`ModelInfer`, and `Classify` are served here: one receiving thread takes the calls in
batches (`recv_batch_details`) and hands each batch to the event loop in one step, where
the ModelInfer calls are decoded into the core's requests and given to
`DataPlane.infer_batch` together, and each Classify call's images are queued with
`DataPlane.enqueue`: no coroutine per call. Each answer goes back from a done-callback
(`respond` and `fail` only queue it for the I/O threads). Every other method (health,
reflection, both streams, metadata, repository, config, statistics) is forwarded by
pygrpc-native to the grpc.aio server (`GrpcFront`) behind it, on a Unix socket in a
private folder: those keep every behaviour they had.

What grpc.aio did for these two methods is done here: the message size limit (checked before
decoding), bearer tokens, the deadline (dropped before compute by the batcher), a client's
cancellation (its queued call is dropped), one count per call with its code, and the
drain: once stopping, new calls get UNAVAILABLE while the accepted ones finish.

The receive is bounded only with pygrpc-native's own token check: pygrpc-native 0.5 has no
message size limit, and holds a call's whole message before Python sees it (six streams
of 1 GiB took a worker past 3.6 GB and the kernel's OOM killer, docs/security.md). With
tokens on and no service exempt, pygrpc-native refuses an unauthenticated call at its
headers, before any of its body is kept; so only callers holding a token can make it hold a
large message (`receive_bounded`; app.native_wanted picks grpcio otherwise). Its check
covers every path, the forwarded ones too, which is why an exempt service rules it out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError

from mnist_serving_proto import classifier_pb2
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_server.core import tracing
from mnist_serving_server.core.dataplane import DataPlane
from mnist_serving_server.core.decoding import decode_off_loop
from mnist_serving_server.core.drain import SHUTTING_DOWN
from mnist_serving_server.core.inference import (
    InferenceRequest,
    InferenceResponse,
    RequestLimits,
)
from mnist_serving_server.core.registry import ServedVersion
from mnist_serving_server.core.tokens import (
    REASON_UNAUTHENTICATED,
    UNAUTHENTICATED_DETAILS,
    BearerTokens,
)
from mnist_serving_server.grpc_api import v2_tensors
from mnist_serving_server.grpc_api.call_metrics import PROTOCOL, RequestRecord
from mnist_serving_server.grpc_api.classifier_servicer import (
    classify_pixels,
    classify_response,
    has_encoded_images,
)
from mnist_serving_server.grpc_api.front import GrpcFront, GrpcStartError, grpc_address
from mnist_serving_server.grpc_api.grpc_errors import status_for
from mnist_serving_server.metrics import ServerMetrics

try:  # pygrpc-native ships wheels for Linux and macOS; elsewhere the grpcio front serves
    from pygrpc_native import EVENT_CANCEL, NativeGrpcFront

    NATIVE_FRONT_AVAILABLE = True
except ImportError:  # pragma: no cover - the locked environments have it
    NATIVE_FRONT_AVAILABLE = False

logger = logging.getLogger(__name__)

MODEL_INFER: Final = "/inference.GRPCInferenceService/ModelInfer"
CLASSIFY: Final = "/mnist_serving.v1.Classifier/Classify"
# The methods served natively, in the order given to NativeGrpcFront: an event's method id
# is its index here. (path, the name the metrics count it under, the request message)
NATIVE_METHODS: Final = (
    (MODEL_INFER, "ModelInfer", pb.ModelInferRequest),
    (CLASSIFY, "Classify", classifier_pb2.ClassifyRequest),
)
# Calls taken per batch from the I/O threads: more than the model's batch ever holds, so a
# burst reaches the core in one step.
MAX_EVENTS: Final = 1024
HANDOFF_CHECK_S: Final = 0.5
"""How often the receiving thread, waiting for the loop to take its batch, checks that the
loop still runs (a closed loop never will)."""
IO_THREADS: Final = 2
# After the last answer is queued, how long the I/O threads get to write it before close()
# (which ends every stream at once): answers counted as sent by pygrpc-native's own
# counters, then this margin for the bytes in flight.
FLUSH_MARGIN_S: Final = 0.02
FLUSH_LIMIT_S: Final = 2.0
FLUSH_QUIET_CHECKS: Final = 2
SOCKET_NAME: Final = "grpcio.sock"
UNBOUNDED_NATIVE_RECEIVE: Final = (
    "the native gRPC front cannot bound a message's size (pygrpc-native holds the whole "
    "message first) unless every caller is authenticated at its headers: bearer tokens on "
    "and --auth-exempt-services none"
)
# How often the calls pygrpc-native refused itself (no token) are added to the counters.
NATIVE_REFUSALS_POLL_S: Final = 1.0
# As the grpc.aio front words it (message_guard.py), so that both fronts answer alike.
MALFORMED_MESSAGE: Final = (
    "the request is not a valid protobuf message for this method: expected a {message}"
)
_UNAVAILABLE: Final = grpc.StatusCode.UNAVAILABLE.value[0]
_UNAUTHENTICATED: Final = grpc.StatusCode.UNAUTHENTICATED.value[0]
_RESOURCE_EXHAUSTED: Final = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_INVALID_ARGUMENT: Final = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def receive_bounded(tokens: Sequence[str], exempt_services: Sequence[str]) -> bool:
    """Whether the native front bounds what an unknown caller can make it hold: only when
    pygrpc-native checks every call's token at its headers (tokens on, nothing exempt)."""
    return bool(tokens) and not exempt_services


class _Call:
    """One native call between its arrival and its answer."""

    __slots__ = ("call_id", "future", "raw", "record")

    def __init__(self, call_id: int, record: RequestRecord) -> None:
        self.call_id = call_id
        self.record = record
        self.raw = False
        self.future: asyncio.Future[Any] | None = None


class NativeFront:
    """pygrpc-native on host:port for ModelInfer, `fallback` (a GrpcFront bound to a Unix
    socket of its own) for everything else; `port` is the bound port once started."""

    def __init__(
        self,
        dataplane: DataPlane,
        metrics: ServerMetrics,
        fallback: GrpcFront,
        host: str,
        port: int,
        *,
        socket_dir: Path,
        max_message_bytes: int,
        limits: RequestLimits,
        tokens: Sequence[str],
        reuse_port: bool,
    ) -> None:
        self._dataplane = dataplane
        self._metrics = metrics
        self._fallback = fallback
        self._address = grpc_address(host, port)
        self._socket_dir = socket_dir
        self._max_message_bytes = max_message_bytes
        self._limits = limits
        # Checked by pygrpc-native at the headers when nothing is exempt (receive_bounded),
        # else here, after the message (--grpc-front native on trusted networks).
        self._native_tokens = (
            [hashlib.sha256(token.encode("ascii")).digest() for token in tokens]
            if receive_bounded(tokens, fallback.auth_exempt_services)
            else None
        )
        self._tokens = BearerTokens(tokens) if tokens and self._native_tokens is None else None
        self._native_refusals: dict[str, int] = {}
        self._refusal_task: asyncio.Task[None] | None = None
        self._reuse_port = reuse_port
        # The natively served methods whose service --auth-exempt-services leaves open.
        self._exempt_methods = frozenset(
            method_id
            for method_id, (path, _name, _message) in enumerate(NATIVE_METHODS)
            if any(path.startswith(f"/{service}/") for service in fallback.auth_exempt_services)
        )
        self._front: Any = None
        self._receiver: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: dict[int, _Call] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self.port: int | None = None

    @property
    def token_auth(self) -> bool:
        return self._fallback.token_auth

    @property
    def header_auth(self) -> bool:
        """Whether pygrpc-native checks tokens at the headers (`receive_bounded`)."""
        return self._native_tokens is not None

    @property
    def serving(self) -> bool:
        return self._front is not None

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    async def start(self) -> None:
        """Start the fallback on its socket, then bind host:port; GrpcStartError says why not."""
        await self._fallback.start()
        try:
            front = NativeGrpcFront(
                self._address,
                [(path, False) for path, _name, _message in NATIVE_METHODS],
                io_threads=IO_THREADS,
                call_details=True,  # metadata, deadline, and cancel events for unary calls
                metrics=True,  # its per-method counters tell when every answer is written
                reuse_port=self._reuse_port,
                bearer_token_sha256=self._native_tokens,
                unauthenticated_message=UNAUTHENTICATED_DETAILS,
            )
        except OSError as exc:
            raise GrpcStartError(
                f"cannot bind the gRPC port {self._address} (is another server using it?): {exc}"
            ) from None
        front.set_fallback(str(self._socket_dir / SOCKET_NAME))
        self._loop = asyncio.get_running_loop()
        front.start()
        self._front = front
        self.port = int(front.bound_port)
        self._receiver = threading.Thread(
            target=self._receive, args=(front, self._loop), name="mnist-grpc-native", daemon=True
        )
        self._receiver.start()
        if self._native_tokens is not None:
            self._refusal_task = asyncio.create_task(
                self._count_native_refusals(), name="mnist-native-refusals"
            )

    async def _count_native_refusals(self) -> None:
        """Count the calls pygrpc-native refused for want of a token (they never reach
        Python) as refused calls, every NATIVE_REFUSALS_POLL_S and once more at stop."""
        while self._front is not None:
            self._add_native_refusals(self._front)
            await asyncio.sleep(NATIVE_REFUSALS_POLL_S)

    def _add_native_refusals(self, front: Any) -> None:
        counters = front.metrics() or {}
        methods = counters.get("methods", {})
        for path, name, _message in NATIVE_METHODS:
            self._add_refused(path, name, methods.get(path, {}))
        self._add_refused("", "", methods.get("other", {}))  # forwarded: counted as refused

    def _add_refused(self, key: str, method: str, counters: dict[str, Any]) -> None:
        refused = int(counters.get("status", {}).get(_UNAUTHENTICATED, {}).get("count", 0))
        new = refused - self._native_refusals.get(key, 0)
        self._native_refusals[key] = refused
        if new <= 0:
            return
        # Added up at once: a flood of refusals must not cost the loop a call each.
        self._metrics.on_rejected(REASON_UNAUTHENTICATED, new)
        if method:  # counted, with no duration: the call never reached this process's code
            self._metrics.requests.labels(
                protocol=PROTOCOL,
                method=method,
                model="",
                version="",
                code=grpc.StatusCode.UNAUTHENTICATED.name,
            ).inc(new)

    # --- the receiving thread, then the loop ------------------------------------------

    def _receive(self, front: Any, loop: asyncio.AbstractEventLoop) -> None:
        """Hand every batch of events to the loop, until the front closes.

        One batch at a time: the next `recv_batch_details` waits until the loop has taken
        the last batch (`taken`), so the calls that arrive meanwhile wait in pygrpc-native's
        queue and reach the loop together, in one wake-up and one loop hop. Receiving at
        once instead takes a batch of one or two calls per wake-up under load, each wake-up
        a futex, a spin in the channel and a self-pipe write (docs/performance.md)."""
        taken = threading.Event()
        while True:
            events = front.recv_batch_details(MAX_EVENTS)  # blocks without the GIL
            if events is None:
                return
            if not events:
                continue
            taken.clear()
            try:
                loop.call_soon_threadsafe(self._on_events, events, taken)
            except RuntimeError:  # the loop is closed: nobody is left to answer
                return
            # Not kept while the next recv blocks: the batch's payloads would stay alive
            # (a quiet server held its last batch of large messages until the next call).
            del events
            while not taken.wait(HANDOFF_CHECK_S):
                if loop.is_closed():
                    return

    def _on_events(self, events: Sequence[Any], taken: threading.Event) -> None:
        try:
            self._serve_events(events)
        finally:
            taken.set()

    def _serve_events(self, events: Sequence[Any]) -> None:
        requests: list[InferenceRequest] = []
        calls: list[_Call] = []
        front = self._front
        for kind, call_id, method_id, payload, _key, details in events:
            if kind == EVENT_CANCEL:
                self._cancel(call_id)
                continue
            call = self._admit(front, call_id, method_id, payload, details)
            if call is None:
                continue
            remaining = details[2]  # (metadata, peer, seconds left or None)
            deadline = None if remaining is None else time.monotonic() + remaining
            message_type = NATIVE_METHODS[method_id][2]
            try:
                message = message_type.FromString(payload)
            except DecodeError:
                malformed = MALFORMED_MESSAGE.format(message=message_type.DESCRIPTOR.full_name)
                self._answer_error(
                    call, _INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT, malformed
                )
                continue
            if isinstance(message, classifier_pb2.ClassifyRequest):
                self._classify(call, message, deadline)
                continue
            request, call.raw = v2_tensors.core_request(message, deadline)
            call.record.trace_request(request)
            requests.append(request)
            calls.append(call)
        if not requests:
            return

        def answer(index: int, result: InferenceResponse | BaseException) -> None:
            self._answer(calls[index], requests[index], result)

        futures = self._dataplane.infer_batch(requests, self._limits, answer)
        for call, future in zip(calls, futures, strict=True):
            call.future = future  # None when refused: already answered

    def _admit(
        self, front: Any, call_id: int, method_id: int, payload: bytes, details: Any
    ) -> _Call | None:
        """A record for the call, or None when it is refused before decoding."""
        # details[0]: the call's metadata, read (for its W3C trace context) only when tracing
        record = RequestRecord(self._metrics, NATIVE_METHODS[method_id][1], details[0]).__enter__()
        if self._stopping:
            front.fail(call_id, _UNAVAILABLE, SHUTTING_DOWN)
            record.finish(grpc.StatusCode.UNAVAILABLE)
            return None
        if self._tokens is not None and method_id not in self._exempt_methods:
            metadata = dict(details[0])
            if not self._tokens.matches(metadata.get("authorization")):
                front.fail(call_id, _UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)
                self._metrics.on_rejected(REASON_UNAUTHENTICATED)
                record.finish(grpc.StatusCode.UNAUTHENTICATED)
                return None
        if len(payload) > self._max_message_bytes:
            front.fail(
                call_id,
                _RESOURCE_EXHAUSTED,
                f"the request is {len(payload)} bytes, larger than the server's limit of "
                f"{self._max_message_bytes} (max_message_bytes); send fewer images per call",
            )
            record.finish(grpc.StatusCode.RESOURCE_EXHAUSTED)
            return None
        call = _Call(call_id, record)
        self._calls[call_id] = call
        self._idle.clear()
        return call

    def _classify(
        self, call: _Call, message: classifier_pb2.ClassifyRequest, deadline: float | None
    ) -> None:
        """Queue one Classify call's images (the batcher joins them with the rest of this
        batch's calls); PNG/JPEG images are decoded off the loop first. Answered from the
        queue's callback, or at once when refused."""
        record = call.record
        try:
            served, contract = self._dataplane.classifier(message.model_name, message.model_version)
            record.model = served.name
            record.version = served.version
            trace = (
                None
                if record.span is None
                else record.trace_call(message.request_id, len(message.images))
            )
            pixels = partial(
                classify_pixels,
                message,
                contract,
                max_images=self._limits.max_rows,
                max_decoded_pixels=self._limits.max_decoded_pixels,
                trace=trace,
            )
            if not has_encoded_images(message):
                self._queue_classify(call, message, served, pixels(), deadline, trace)
                return
        except Exception as exc:  # every refusal answered with its status
            self._answer_failure(call, exc)
            return

        def decoded(future: asyncio.Future[Any]) -> None:
            if future.cancelled():  # the caller left while its images decoded
                self._answer_failure(call, asyncio.CancelledError())
                return
            try:
                images = future.result()
                now_served = self._dataplane.decoded_for(
                    message.model_name, message.model_version, served
                )
                record.version = now_served.version
                self._queue_classify(call, message, now_served, images, deadline, trace)
            except Exception as exc:
                self._answer_failure(call, exc)

        call.future = decode_off_loop(pixels)
        call.future.add_done_callback(decoded)

    def _queue_classify(
        self,
        call: _Call,
        message: classifier_pb2.ClassifyRequest,
        served: ServedVersion,
        pixels: Any,
        deadline: float | None,
        trace: Any,
    ) -> None:
        """Queue decoded images; `answer` runs once with the outputs or the error."""

        def answer(result: dict[str, Any] | BaseException) -> None:
            if isinstance(result, BaseException):
                self._answer_failure(call, result)
                return
            try:
                reply = classify_response(message, served, result).SerializeToString()
            except Exception as exc:  # answered INTERNAL (logged by status_for)
                self._answer_failure(call, exc)
                return
            self._answer_reply(call, reply)

        call.future = self._dataplane.enqueue(
            served, pixels, deadline=deadline, done=answer, trace=trace
        )

    def _answer(
        self, call: _Call, request: InferenceRequest, result: InferenceResponse | BaseException
    ) -> None:
        call.record.model = request.resolved_model
        call.record.version = request.resolved_version
        if isinstance(result, InferenceResponse):
            self._answer_reply(call, v2_tensors.grpc_response_bytes(result, raw=call.raw))
            return
        self._answer_failure(call, result)

    def _answer_reply(self, call: _Call, reply: bytes) -> None:
        self._done(call)
        if self._front.respond(call.call_id, reply):
            call.record.finish(grpc.StatusCode.OK)
        else:  # the caller left (cancelled, or its deadline passed) meanwhile
            call.record.finish(grpc.StatusCode.CANCELLED)

    def _answer_failure(self, call: _Call, error: BaseException) -> None:
        if isinstance(error, asyncio.CancelledError):
            self._done(call)
            call.record.finish(grpc.StatusCode.CANCELLED)
            return
        span = call.record.span
        if span is None:
            code, message = status_for(error)
        else:  # so that an INTERNAL error's log line carries the call's trace id
            with tracing.current_span(span):
                code, message = status_for(error)
        self._answer_error(call, code.value[0], code, message, error)

    def _answer_error(
        self,
        call: _Call,
        number: int,
        code: grpc.StatusCode,
        message: str,
        error: BaseException | None = None,
    ) -> None:
        self._done(call)
        self._front.fail(call.call_id, number, message)
        call.record.finish(code, error)

    def _cancel(self, call_id: int) -> None:
        """The caller cancelled, or its deadline passed: free its place in the queue."""
        call = self._calls.get(call_id)
        if call is not None and call.future is not None and not call.future.done():
            call.future.cancel()  # the batch's callback then counts it CANCELLED

    def _done(self, call: _Call) -> None:
        self._calls.pop(call.call_id, None)
        if not self._calls:
            self._idle.set()

    # --- stopping ----------------------------------------------------------------------

    async def stop(self, grace_period_s: float) -> None:
        """Refuse new calls (UNAVAILABLE), let the accepted ones finish within the grace
        period, write every answer, close; then stop the fallback."""
        front = self._front
        loop = asyncio.get_running_loop()
        give_up = loop.time() + grace_period_s
        if front is not None:
            self._stopping = True  # answers still go out through `front` while draining
            try:
                await asyncio.wait_for(self._idle.wait(), max(give_up - loop.time(), 0.0))
            except TimeoutError:
                logger.warning("grace period over; %d native calls still running", self.in_flight)
            await self._flush(front, min(give_up, loop.time() + FLUSH_LIMIT_S))
            if self._refusal_task is not None:
                self._refusal_task.cancel()
                self._add_native_refusals(front)
            # Events handed over until close() still find `front` to refuse them with.
            await asyncio.to_thread(front.close)
            self._front = None
            if self._receiver is not None:
                await asyncio.to_thread(self._receiver.join)
        await self._fallback.stop(max(give_up - loop.time(), 0.0))
        shutil.rmtree(self._socket_dir, ignore_errors=True)

    async def _flush(self, front: Any, until: float) -> None:
        """Until pygrpc-native has sent every answer it was given (its counters) and no call
        came in for a margin: close() right after respond() can lose answers still being
        written, and close() drops the calls it finds open (pygrpc-native 0.5 has no
        graceful GOAWAY), so it waits for a quiet moment, within `until`."""
        loop = asyncio.get_running_loop()
        quiet_checks = 0
        last_started = -1
        while loop.time() < until and quiet_checks < FLUSH_QUIET_CHECKS:
            # pygrpc-native offers no event for it
            started, open_calls = _started_and_open(front.metrics())
            quiet = open_calls == 0 and started == last_started
            quiet_checks = quiet_checks + 1 if quiet else 0
            last_started = started
            await asyncio.sleep(FLUSH_MARGIN_S)


def _started_and_open(counters: dict[str, Any] | None) -> tuple[int, int]:
    """Calls pygrpc-native started, and those of them not answered yet (its counters)."""
    started = answered = 0
    for method in (counters or {}).get("methods", {}).values():
        started += method.get("started", 0)
        answered += sum(entry.get("count", 0) for entry in method.get("status", {}).values())
    return started, started - answered


def private_socket_dir() -> Path:
    """A folder only this user can enter (mkdtemp: mode 0700) for the fallback's socket."""
    return Path(tempfile.mkdtemp(prefix="mnist-serving-grpc-"))
