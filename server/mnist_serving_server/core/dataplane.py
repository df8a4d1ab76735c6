"""What every transport calls: model lookup, readiness, inference, the repository API.

A transport converts wire <-> numpy and hands off here; nothing here knows a wire format.
Per request this costs one registry lookup (two dict reads), the batcher's submit and two
additions to the version's statistics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_serving_server.core import tracing
from mnist_serving_server.core.classifier import ClassifierContract
from mnist_serving_server.core.decoding import decode_off_loop
from mnist_serving_server.core.errors import (
    FailedPreconditionError,
    ModelNotFoundError,
    NotReadyError,
)
from mnist_serving_server.core.inference import (
    InferenceRequest,
    InferenceResponse,
    RequestLimits,
    decode_input,
    encode_outputs,
    queue_timeout_s,
    select_outputs,
)
from mnist_serving_server.core.model_config import ModelConfig
from mnist_serving_server.core.registry import (
    IndexEntry,
    ModelRegistry,
    ModelState,
    ServedVersion,
)
from mnist_serving_server.core.replicas import (
    Replicas,
    SingleProcess,
    StatisticsRecord,
    merge_indexes,
    merge_statistics,
)
from mnist_serving_server.core.tensors import RequestedOutput, takes_encoded
from mnist_serving_server.core.triton_records import statistics_record

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext

NOT_READY_MESSAGE = "the server is not ready: warming up or shutting down"
MODEL_CHANGED_MESSAGE = (
    "the model's input changed while the request's images were decoded (a new version was "
    "loaded); send the request again"
)


class PendingCall:
    """A call queued by `DataPlane.begin`: its future carries the model's outputs.

    `queued`: whether it reached its batcher (a refusal before that is counted where it
    happens, or not at all for bad input, as for a call refused synchronously)."""

    __slots__ = ("began", "future", "queued", "request", "requested", "served")

    def __init__(
        self,
        served: ServedVersion,
        request: InferenceRequest,
        requested: tuple[RequestedOutput, ...] | None,
        future: asyncio.Future[dict[str, np.ndarray]],
        began: float,
    ) -> None:
        self.served = served
        self.request = request
        self.requested = requested
        self.future = future
        self.began = began
        self.queued = True

    def answer(self, computed: dict[str, np.ndarray]) -> InferenceResponse:
        """The response from the outputs the batcher computed (its success counted)."""
        served = self.served
        served.statistics.success.add(time.perf_counter() - self.began)
        info = served.info
        outputs = encode_outputs(computed, self.requested, info.labels)
        return InferenceResponse(info.name, info.version, self.request.id, outputs)

    def failed(self) -> None:
        """Count the call as failed (its error goes to the caller as it is)."""
        if self.queued:
            self.served.statistics.fail.add(time.perf_counter() - self.began)


def _enqueue(
    served: ServedVersion,
    array: np.ndarray,
    deadline: float | None,
    trace: SpanContext | None = None,
) -> tuple[asyncio.Future[dict[str, np.ndarray]], float]:
    """Queue `array` in the version's batcher: its future and when it was queued (the
    statistics' clock); a refusal (queue full, stopped) is counted as a failure. `trace`:
    the call's span (InferenceRequest.trace), for its queue span and the batch's link."""
    began = time.perf_counter()
    try:
        return served.batcher.enqueue(array, deadline=deadline, trace=trace), began
    except BaseException:
        served.statistics.fail.add(time.perf_counter() - began)
        raise


def _deadline(request: InferenceRequest) -> float | None:
    """The call's deadline (time.monotonic()), or its queue timeout from now if sooner."""
    deadline = request.deadline
    timeout_s = queue_timeout_s(request)
    if timeout_s is not None:
        started = time.monotonic()
        if deadline is None or started + timeout_s < deadline:
            deadline = started + timeout_s
    return deadline


def _chain(inner: asyncio.Future[Any], outer: asyncio.Future[Any]) -> None:
    """`outer` ends as `inner` does; cancelling `outer` cancels `inner` (leaves its queue)."""

    def copy(done: asyncio.Future[Any]) -> None:
        if outer.done():
            return
        if done.cancelled():
            outer.cancel()
        elif (error := done.exception()) is not None:
            outer.set_exception(error)
        else:
            outer.set_result(done.result())

    def cancel(done: asyncio.Future[Any]) -> None:
        if done.cancelled():
            inner.cancel()

    inner.add_done_callback(copy)
    outer.add_done_callback(cancel)


def _check_room(served: ServedVersion, rows: int) -> None:
    """Refuse now (counted as a failure, as `_enqueue` counts it) if `rows` images do not fit
    the version's queue: under overload a refusal must cost less than an acceptance."""
    try:
        served.batcher.check_room(rows)
    except BaseException:
        served.statistics.fail.add(0.0)
        raise


def _settle(
    call: PendingCall, index: int, done: Callable[[int, InferenceResponse | BaseException], None]
) -> Callable[[asyncio.Future[Any]], None]:
    def settle(future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            call.failed()
            done(index, asyncio.CancelledError())
            return
        error = future.exception()
        if error is not None:
            call.failed()
            done(index, error)
            return
        try:
            response = call.answer(future.result())
        except Exception as exc:  # an output with no V2 encoding: a bug, answered INTERNAL
            done(index, exc)
            return
        done(index, response)

    return settle


class ModelControlMode(StrEnum):
    """How the repository may change while serving (Triton's names)."""

    NONE = "none"
    """Fixed at start: the repository API refuses changes."""
    EXPLICIT = "explicit"
    """Every model loaded at start; the repository API loads and unloads."""
    POLL = "poll"
    """The folder is re-read periodically; the repository API refuses changes."""


class DataPlane:
    """The served repository behind every API (Classify, KServe V2 over gRPC and HTTP)."""

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        control_mode: ModelControlMode,
        replicas: Replicas | None = None,
    ) -> None:
        self.registry = registry
        self.control_mode = control_mode
        # With --workers N: every process of the server; repository changes go through it.
        self.replicas: Replicas = SingleProcess(registry) if replicas is None else replicas
        self._ready = False

    # --- readiness -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Warm and accepting work: set_ready(True) was called and some model is serving."""
        return self._ready and self.registry.any_ready

    @property
    def accepting(self) -> bool:
        """set_ready(True) was called: warm-up is over and shutdown has not begun."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        self._ready = ready

    def model_ready(self, name: str, version: str) -> bool:
        """As Triton answers ModelReady: a model that is not served is simply not ready."""
        if not self._ready:
            return False
        try:
            return self.registry.resolve(name, version).ready
        except ModelNotFoundError:
            return False

    # --- lookup and inference ----------------------------------------------------------------

    def model(self, name: str, version: str) -> ServedVersion:
        """The served version a request names; ModelNotFoundError names what is served.

        NotReadyError while warming up or shutting down: not found then would be a lie.
        """
        if not self._ready:
            raise NotReadyError(NOT_READY_MESSAGE)
        return self.registry.resolve(name, version)

    def classifier(self, name: str, version: str) -> tuple[ServedVersion, ClassifierContract]:
        """The version and its image contract, or FailedPreconditionError for other models."""
        served = self.model(name, version)
        contract = served.classifier
        if contract is None:
            raise FailedPreconditionError(served.classifier_problem)
        return served, contract

    def decoded_for(self, name: str, version: str, decoded_for: ServedVersion) -> ServedVersion:
        """The version to queue images in that were decoded off the loop for `decoded_for`:
        the one served now (a swap may have retired that one meanwhile), as long as it takes
        the same input; else NotReadyError (send again)."""
        served = self.model(name, version)
        if served.info.inputs[0] != decoded_for.info.inputs[0]:
            raise NotReadyError(MODEL_CHANGED_MESSAGE)
        return served

    async def infer(
        self,
        served: ServedVersion,
        inputs: np.ndarray,
        *,
        deadline: float | None,
        trace: SpanContext | None = None,
    ) -> dict[str, np.ndarray]:
        """Every output of `served` for `inputs` ([n, ...]); `deadline` is time.monotonic().
        The Classify API's entry: its images are already the model's array. `trace`: the
        call's span when it is traced (see InferenceRequest.trace).

        Call it right after `model()` / `classifier()`, with no await in between (the
        registry's swap relies on it; see registry.py).
        """
        if not self._ready:
            raise NotReadyError(NOT_READY_MESSAGE)
        future, began = _enqueue(served, inputs, deadline, trace)
        try:
            outputs = await future
        except BaseException:
            served.statistics.fail.add(time.perf_counter() - began)
            raise
        served.statistics.success.add(time.perf_counter() - began)
        return outputs

    def enqueue(
        self,
        served: ServedVersion,
        inputs: np.ndarray,
        *,
        deadline: float | None,
        done: Callable[[dict[str, np.ndarray] | BaseException], None],
        trace: SpanContext | None = None,
    ) -> asyncio.Future[Any]:
        """`infer` without a coroutine, for a front that takes its calls in batches: queue
        now (a refusal raises at once, as `infer` does), then `done(outputs or error)` once,
        on the loop (a CancelledError when the returned future is cancelled). `trace` as
        for `infer`."""
        if not self._ready:
            raise NotReadyError(NOT_READY_MESSAGE)
        future, began = _enqueue(served, inputs, deadline, trace)

        def settle(future: asyncio.Future[dict[str, np.ndarray]]) -> None:
            elapsed = time.perf_counter() - began
            if future.cancelled():
                served.statistics.fail.add(elapsed)
                done(asyncio.CancelledError())
                return
            error = future.exception()
            if error is not None:
                served.statistics.fail.add(elapsed)
                done(error)
                return
            served.statistics.success.add(elapsed)
            done(future.result())

        future.add_done_callback(settle)
        return future

    # --- the inference entry points: one call, or many in one step ---------------------------

    def begin(self, request: InferenceRequest, limits: RequestLimits) -> PendingCall:
        """Resolve the version, check and convert the input, and queue it, all with no await
        in between (the registry's hot swap relies on it: registry.py). Raises the request's
        ServingError at once; the call's outputs then arrive through `PendingCall`."""
        if not self._ready:
            raise NotReadyError(NOT_READY_MESSAGE)
        served = self.registry.resolve(request.model, request.version)
        request.resolved_model = served.name
        request.resolved_version = served.version
        if request.invalid is not None:
            raise request.invalid
        requested = select_outputs(request, served.output_names)
        shape = request.input.shape
        if shape and shape[0] > 0:  # a full queue refuses before the input is decoded
            _check_room(served, shape[0])
        spec = served.info.inputs[0]
        if takes_encoded(spec, request.input.datatype):
            return self._begin_decoding(served, request, requested, limits)
        array = decode_input(request.input, spec, limits)
        future, began = _enqueue(served, array, _deadline(request), request.trace)
        return PendingCall(served, request, requested, future, began)

    def _begin_decoding(
        self,
        served: ServedVersion,
        request: InferenceRequest,
        requested: tuple[RequestedOutput, ...] | None,
        limits: RequestLimits,
    ) -> PendingCall:
        """PNG/JPEG inputs: decoded on the decoder thread (core.decoding), then queued in the
        version served by then (resolved again: a swap may have retired this one)."""
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        call = PendingCall(served, request, requested, future, time.perf_counter())
        call.queued = False
        spec = served.info.inputs[0]
        trace = request.trace

        def decode() -> np.ndarray:
            if trace is None:
                return decode_input(request.input, spec, limits)
            return tracing.in_span(
                tracing.DECODE_SPAN, trace, lambda: decode_input(request.input, spec, limits)
            )

        decode_off_loop(decode).add_done_callback(lambda decoded: self._queue(call, decoded))
        return call

    def _queue(self, call: PendingCall, decoded: asyncio.Future[np.ndarray]) -> None:
        """Queue a decoded call (or fail it with its decoding's error)."""
        future = call.future
        if future.done():  # cancelled while it decoded
            return
        try:
            array = decoded.result()
            request = call.request
            served = self.decoded_for(request.model, request.version, call.served)
            inner, call.began = _enqueue(served, array, _deadline(request), request.trace)
        except Exception as exc:
            future.set_exception(exc)
            return
        call.served = served
        call.queued = True
        request.resolved_version = served.version
        _chain(inner, future)

    async def infer_request(
        self, request: InferenceRequest, limits: RequestLimits
    ) -> InferenceResponse:
        """One call through its model's batcher: the outputs in wire form, or its error."""
        call = self.begin(request, limits)
        try:
            computed = await call.future
        except BaseException:
            call.failed()
            raise
        return call.answer(computed)

    def infer_batch(
        self,
        requests: Sequence[InferenceRequest],
        limits: RequestLimits,
        done: Callable[[int, InferenceResponse | BaseException], None],
    ) -> list[asyncio.Future[Any] | None]:
        """Many calls in one step, no coroutine per call: `done(i, result)` is called exactly
        once for each requests[i], with its response or its error: at once for a call that
        is refused (bad input, unknown model, queue full), else when its batch has run.
        Returns each queued call's future (None for the refused): cancelling it drops the
        call from its queue, and `done` then gets a CancelledError.
        Call it on the event loop's thread; `done` runs there too and must not raise."""
        futures: list[asyncio.Future[Any] | None] = []
        for index, request in enumerate(requests):
            try:
                call = self.begin(request, limits)
            except Exception as exc:
                done(index, exc)
                futures.append(None)
                continue
            call.future.add_done_callback(_settle(call, index, done))
            futures.append(call.future)
        return futures

    # --- the repository extension (for the whole server, every worker process) ----------

    async def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        entries = merge_indexes([self.registry.index(), *await self.replicas.other_indexes()])
        if ready_only:
            entries = [entry for entry in entries if entry.state is ModelState.READY]
        return entries

    def in_repository(self, name: str) -> bool:
        """Whether `name` is a model of the repository (or still served after its removal)."""
        return any(entry.name == name for entry in self.registry.index())

    async def load(self, name: str) -> None:
        """Load `name` in every worker process; returns once all of them serve it."""
        self._check_changes_allowed("load")
        await self.replicas.load(name)

    async def unload(self, name: str) -> None:
        """Unload `name` in every worker process; returns once none of them serves it."""
        self._check_changes_allowed("unload")
        await self.replicas.unload(name)

    def model_config(self, name: str) -> tuple[ModelConfig, ServedVersion]:
        """The model's effective config and its latest served version (for the graph's part)."""
        config = self.registry.model_config(name)
        return config, self.registry.resolve(name, "")

    def versions(self, name: str) -> list[str]:
        """The served versions of `name` (ModelNotFoundError when none is)."""
        return [served.version for served in self.registry.served_versions(name, "")]

    async def statistics(self, name: str, version: str) -> list[StatisticsRecord]:
        """Triton's statistics of the served versions ("" = all), summed over the workers."""
        local = [statistics_record(s) for s in self.registry.served_versions(name, version)]
        return merge_statistics([local, *await self.replicas.other_statistics(name, version)])

    def _check_changes_allowed(self, action: str) -> None:
        if self.control_mode is not ModelControlMode.EXPLICIT:
            raise FailedPreconditionError(
                f"cannot {action} models: the server runs with --model-control-mode "
                f"{self.control_mode.value}; restart it with --model-control-mode explicit "
                "to change models through the repository API"
            )
