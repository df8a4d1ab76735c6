"""The load generator: N client processes, each with its own event loop and channels.

Requests are serialized once, up front, and sent as raw bytes through grpc.aio's
generic multicallables, so the client spends its CPU on RPCs rather than on protobuf
(the client shares this machine's cores with the server). Every scenario is bounded
in time (warm-up + duration, per-RPC deadlines, a hard kill of late processes) and in
count (`max_requests`).

Closed loop: `concurrency` callers each send a request as soon as the previous one is
answered. Open loop: requests are scheduled at a fixed rate (Poisson or uniform) and
each latency is measured from its *scheduled* send time, so a client that falls behind
(coordinated omission) shows up as latency instead of hiding it.

Run one scenario by hand: `python -m bench.loadgen --target 127.0.0.1:8001 --kind
classify_unary --concurrency 64 --duration 5`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import queue
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import Any, Final

import grpc
import numpy as np

from bench.results import OK_CODE, ScenarioResult, WorkerResult, merge_worker_results
from bench.scenarios import Arrival, Kind, Mode, Scenario
from bench.stats import split_evenly

CLASSIFY_METHOD = "/mnist_serving.v1.Classifier/Classify"
CLASSIFY_STREAM_METHOD = "/mnist_serving.v1.Classifier/ClassifyStream"
MODEL_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
V2_INPUT_NAME = "pixels"
IMAGE_SIDE = 28
PIXELS_PER_IMAGE = IMAGE_SIDE * IMAGE_SIDE
PAYLOAD_SEED = 7
MAX_PIXEL = 256

# Client processes are started with `spawn`: gRPC's core does not survive fork.
PROCESS_START_METHOD: Final = "spawn"
# Spawning and importing grpc takes ~1 s on an idle machine; a busy one is slower.
READY_TIMEOUT_S = 60.0
CONNECT_TIMEOUT_S = 15.0
# The processes start together this long after the last one reports ready.
START_MARGIN_S = 0.3
# After the window closes, the last requests get their RPC deadline plus this to return.
EXIT_MARGIN_S = 15.0
JOIN_TIMEOUT_S = 5.0
MESSAGE_LIMIT_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    # Without a local pool, channels to one target share one TCP connection.
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", MESSAGE_LIMIT_BYTES),
    ("grpc.max_send_message_length", MESSAGE_LIMIT_BYTES),
)
_CODE_NAMES: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}


class LoadGenError(RuntimeError):
    """A scenario could not be run (client process failed, timed out, or never connected)."""


def build_pixels(images: int, seed: int = PAYLOAD_SEED) -> np.ndarray:
    """Deterministic uint8 pixels [images,1,28,28] (the model's cost does not depend on them)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, MAX_PIXEL, size=(images, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)


def v2_request_bytes(pixels: np.ndarray, model_name: str) -> bytes:
    """A serialized V2 ModelInferRequest: `pixels` as one raw UINT8 input."""
    # Imported here: the V2 stubs are optional for the other scenarios.
    from mnist_serving_proto import open_inference_pb2

    request = open_inference_pb2.ModelInferRequest(model_name=model_name)
    tensor = request.inputs.add()
    tensor.name = V2_INPUT_NAME
    tensor.datatype = "UINT8"
    tensor.shape.extend(pixels.shape)
    request.raw_input_contents.append(pixels.tobytes())
    return request.SerializeToString()


def classify_request_bytes(pixels: np.ndarray) -> bytes:
    """A serialized ClassifyRequest: one Image (784 raw pixels) per image of `pixels`."""
    from mnist_serving_proto import classifier_pb2

    classify = classifier_pb2.ClassifyRequest(
        images=[classifier_pb2.Image(pixels=image.tobytes()) for image in pixels]
    )
    return classify.SerializeToString()


def build_request(scenario: Scenario) -> tuple[str, bytes]:
    """The method path and the serialized request a scenario sends, built once."""
    pixels = build_pixels(scenario.images_per_request)
    if scenario.kind is Kind.V2_UNARY:
        return MODEL_INFER_METHOD, v2_request_bytes(pixels, scenario.model_name)
    method = CLASSIFY_STREAM_METHOD if scenario.kind is Kind.CLASSIFY_STREAM else CLASSIFY_METHOD
    return method, classify_request_bytes(pixels)


@dataclass(frozen=True)
class WorkerShare:
    """One client process's part of a scenario."""

    index: int
    concurrency: int
    rate: float
    max_requests: int


def plan_shares(scenario: Scenario) -> list[WorkerShare]:
    """Split a scenario's callers (or rate) and request budget over its client processes."""
    processes = scenario.client_processes
    concurrency = (
        [1] * processes
        if scenario.mode is Mode.OPEN
        else split_evenly(scenario.concurrency, processes)
    )
    budgets = split_evenly(scenario.max_requests, processes)
    return [
        WorkerShare(
            index=index,
            concurrency=concurrency[index],
            rate=scenario.rate / processes,
            max_requests=max(budgets[index], 1),
        )
        for index in range(processes)
    ]


class _Budget:
    """Requests this process may still send."""

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


class _Recorder:
    """Accumulates one process's measurements for the shared window."""

    def __init__(self, measure_start: float, measure_end: float) -> None:
        self.measure_start = measure_start
        self.measure_end = measure_end
        self.result = WorkerResult(window_s=measure_end - measure_start)
        self._errors: Counter[str] = Counter()

    def record(self, sent_at: float, done_at: float, code: str) -> None:
        if self.measure_start <= sent_at < self.measure_end:
            if code == OK_CODE:
                self.result.latencies_s.append(done_at - sent_at)
            else:
                self._errors[code] += 1
        if code == OK_CODE and self.measure_start <= done_at <= self.measure_end:
            self.result.completed_in_window += 1

    def finish(self, requests_sent: int, max_send_lag_s: float) -> WorkerResult:
        self.result.errors = dict(self._errors)
        self.result.requests_sent = requests_sent
        self.result.max_send_lag_s = max_send_lag_s
        return self.result


UnaryCall = Callable[..., Any]


async def _closed_loop_unary(
    calls: Sequence[UnaryCall],
    payload: bytes,
    scenario: Scenario,
    share: WorkerShare,
    recorder: _Recorder,
    budget: _Budget,
) -> None:
    async def caller(call: UnaryCall) -> None:
        while True:
            sent_at = time.monotonic()
            if sent_at >= recorder.measure_end or not budget.take():
                return
            try:
                await call(payload, timeout=scenario.rpc_timeout_s)
                code = OK_CODE
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            recorder.record(sent_at, time.monotonic(), code)

    await asyncio.gather(*(caller(calls[i % len(calls)]) for i in range(share.concurrency)))


async def _open_loop_unary(
    calls: Sequence[UnaryCall],
    payload: bytes,
    scenario: Scenario,
    share: WorkerShare,
    recorder: _Recorder,
    budget: _Budget,
    start_at: float,
) -> float:
    """Send on schedule; returns how far (s) the sender fell behind at worst."""
    rng = random.Random(PAYLOAD_SEED + share.index)
    interval = 1.0 / share.rate
    slots = asyncio.Semaphore(scenario.max_outstanding)
    in_flight: set[asyncio.Task[None]] = set()
    max_lag = 0.0

    async def fire(call: UnaryCall, scheduled_at: float) -> None:
        try:
            await call(payload, timeout=scenario.rpc_timeout_s)
            code = OK_CODE
        except grpc.aio.AioRpcError as error:
            code = error.code().name
        finally:
            slots.release()
        recorder.record(scheduled_at, time.monotonic(), code)

    # Processes interleave their uniform schedules instead of sending in lockstep.
    scheduled_at = start_at + interval * share.index / scenario.client_processes
    sent = 0
    while scheduled_at < recorder.measure_end and budget.take():
        delay = scheduled_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        max_lag = max(max_lag, time.monotonic() - scheduled_at)
        task = asyncio.create_task(fire(calls[sent % len(calls)], scheduled_at))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        sent += 1
        if scenario.arrival is Arrival.POISSON:
            scheduled_at += rng.expovariate(share.rate)
        else:
            scheduled_at += interval
    await asyncio.gather(*in_flight)
    return max_lag


def _reply_code(reply: bytes) -> str:
    """The status of one ClassifyStream reply (errors travel inside the message)."""
    from mnist_serving_proto import classifier_pb2

    response = classifier_pb2.ClassifyResponse.FromString(reply)
    if response.HasField("error") and response.error.code != 0:
        return _CODE_NAMES.get(response.error.code, str(response.error.code))
    return OK_CODE


async def _one_stream(
    channel: grpc.aio.Channel,
    payload: bytes,
    scenario: Scenario,
    recorder: _Recorder,
    budget: _Budget,
) -> None:
    stream_timeout = scenario.warmup_s + scenario.duration_s + scenario.rpc_timeout_s
    call: grpc.aio.StreamStreamCall[bytes, bytes] = channel.stream_stream(CLASSIFY_STREAM_METHOD)(
        timeout=stream_timeout
    )
    sent_times: deque[float] = deque()
    window = asyncio.Semaphore(scenario.window)

    async def writer() -> None:
        try:
            while True:
                await window.acquire()
                sent_at = time.monotonic()
                if sent_at >= recorder.measure_end or not budget.take():
                    break
                sent_times.append(sent_at)
                await call.write(payload)
            await call.done_writing()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            # The stream ended under us; the reader reports its status.
            return

    writing = asyncio.create_task(writer())
    try:
        while True:
            reply = await call.read()
            if not isinstance(reply, bytes):  # grpc.aio.EOF: the server ended the stream
                break
            sent_at = sent_times.popleft()
            window.release()
            code = _reply_code(reply) if scenario.verify_replies else OK_CODE
            recorder.record(sent_at, time.monotonic(), code)
    except grpc.aio.AioRpcError as error:
        failed_at = time.monotonic()
        while sent_times:
            recorder.record(sent_times.popleft(), failed_at, error.code().name)
    finally:
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
        call.cancel()


async def _drive(
    scenario: Scenario,
    target: str,
    share: WorkerShare,
    wait_for_start: Callable[[], float],
) -> WorkerResult:
    method, payload = build_request(scenario)
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        for _ in range(scenario.channels_per_process)
    ]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)),
            CONNECT_TIMEOUT_S,
        )
        start_at = await asyncio.get_running_loop().run_in_executor(None, wait_for_start)
        recorder = _Recorder(
            start_at + scenario.warmup_s, start_at + scenario.warmup_s + scenario.duration_s
        )
        budget = _Budget(share.max_requests)
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        max_lag = 0.0
        if scenario.kind is Kind.CLASSIFY_STREAM:
            await asyncio.gather(
                *(
                    _one_stream(channels[i % len(channels)], payload, scenario, recorder, budget)
                    for i in range(share.concurrency)
                )
            )
        else:
            calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
                channel.unary_unary(method) for channel in channels
            ]
            if scenario.mode is Mode.OPEN:
                max_lag = await _open_loop_unary(
                    calls, payload, scenario, share, recorder, budget, start_at
                )
            else:
                await _closed_loop_unary(calls, payload, scenario, share, recorder, budget)
        return recorder.finish(share.max_requests - budget.remaining, max_lag)
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))


def _worker_main(
    scenario: Scenario,
    target: str,
    share: WorkerShare,
    start_queue: multiprocessing.Queue[float],
    result_queue: multiprocessing.Queue[tuple[str, int, Any]],
    start_timeout_s: float,
) -> None:
    """Entry point of one client process: report ready, wait for the start time, run."""

    def wait_for_start() -> float:
        result_queue.put(("ready", share.index, None))
        return start_queue.get(timeout=start_timeout_s)

    try:
        result = asyncio.run(_drive(scenario, target, share, wait_for_start))
    except BaseException as error:  # reported to the parent, which fails the scenario
        result_queue.put(("error", share.index, f"{type(error).__name__}: {error}"))
        raise SystemExit(1) from None
    result_queue.put(("result", share.index, result))


def _stop_processes(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        process.join(timeout=JOIN_TIMEOUT_S)
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join(timeout=JOIN_TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join(timeout=JOIN_TIMEOUT_S)


def run_scenario(
    target: str,
    scenario: Scenario,
    *,
    cpu_seconds: Callable[[], float | None] | None = None,
) -> ScenarioResult:
    """Run one scenario against `target` ("host:port") from separate client processes.

    `cpu_seconds`, when given, samples the server's CPU time at the window's start and end
    so the result carries the server's CPU cost per request.
    """
    context = multiprocessing.get_context(PROCESS_START_METHOD)
    result_queue: multiprocessing.Queue[tuple[str, int, Any]] = context.Queue()
    shares = plan_shares(scenario)
    start_queues: list[multiprocessing.Queue[float]] = [context.Queue() for _ in shares]
    processes = [
        context.Process(
            target=_worker_main,
            args=(
                scenario,
                target,
                share,
                start_queues[share.index],
                result_queue,
                READY_TIMEOUT_S,
            ),
            name=f"bench-client-{share.index}",
            daemon=True,
        )
        for share in shares
    ]
    for process in processes:
        process.start()
    results: dict[int, WorkerResult] = {}
    try:
        _await_messages(result_queue, "ready", len(shares), time.monotonic() + READY_TIMEOUT_S)
        start_at = time.monotonic() + START_MARGIN_S
        for start_queue in start_queues:
            start_queue.put(start_at)
        cpu_used = _sample_cpu_over_window(cpu_seconds, start_at, scenario)
        deadline = (
            start_at
            + scenario.warmup_s
            + scenario.duration_s
            + scenario.rpc_timeout_s
            + EXIT_MARGIN_S
        )
        for index, payload in _await_messages(result_queue, "result", len(shares), deadline):
            results[index] = payload
    finally:
        _stop_processes(processes)
    merged = merge_worker_results(scenario, target, [results[s.index] for s in shares])
    return merged.with_server_cpu(cpu_used)


def _sample_cpu_over_window(
    cpu_seconds: Callable[[], float | None] | None, start_at: float, scenario: Scenario
) -> float | None:
    if cpu_seconds is None:
        return None
    measure_start = start_at + scenario.warmup_s
    time.sleep(max(0.0, measure_start - time.monotonic()))
    before = cpu_seconds()
    time.sleep(max(0.0, measure_start + scenario.duration_s - time.monotonic()))
    after = cpu_seconds()
    if before is None or after is None:
        return None
    return after - before


def _await_messages(
    result_queue: multiprocessing.Queue[tuple[str, int, Any]],
    kind: str,
    count: int,
    deadline: float,
) -> list[tuple[int, Any]]:
    """Collect `count` messages of `kind` from the client processes before `deadline`."""
    received: list[tuple[int, Any]] = []
    while len(received) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LoadGenError(
                f"client processes timed out waiting for {kind!r} "
                f"({len(received)} of {count} arrived)"
            )
        try:
            message_kind, index, payload = result_queue.get(timeout=remaining)
        except queue.Empty:
            continue
        if message_kind == "error":
            raise LoadGenError(f"client process {index} failed: {payload}")
        if message_kind == kind:
            received.append((index, payload))
    return received


def default_client_processes(in_flight: int, cores: int) -> int:
    """One client process per core, but never more processes than callers."""
    return max(1, min(in_flight, cores))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.loadgen", description="Run one load scenario and print JSON."
    )
    parser.add_argument("--target", required=True, help="host:port of the gRPC server")
    parser.add_argument("--kind", type=Kind, choices=list(Kind), default=Kind.CLASSIFY_UNARY)
    parser.add_argument("--mode", type=Mode, choices=list(Mode), default=Mode.CLOSED)
    parser.add_argument("--concurrency", type=int, default=1, help="callers (or streams)")
    parser.add_argument("--window", type=int, default=16, help="stream: messages in flight")
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--rate", type=float, default=0.0, help="open loop: requests/s")
    parser.add_argument("--arrival", type=Arrival, choices=list(Arrival), default=Arrival.POISSON)
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--max-requests", type=int, default=Scenario.max_requests)
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument(
        "--channels",
        type=int,
        default=Scenario.channels_per_process,
        help="channels (connections) per client process",
    )
    parser.add_argument(
        "--max-outstanding",
        type=int,
        default=Scenario.max_outstanding,
        help="open loop: requests in flight per client process before the sender waits",
    )
    parser.add_argument("--no-verify", action="store_true", help="don't parse stream replies")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    scenario = Scenario(
        name=f"{args.kind}-{args.mode}",
        kind=args.kind,
        mode=args.mode,
        concurrency=args.concurrency,
        window=args.window,
        images_per_request=args.images,
        rate=args.rate,
        arrival=args.arrival,
        duration_s=args.duration,
        warmup_s=args.warmup,
        max_requests=args.max_requests,
        client_processes=args.processes,
        channels_per_process=args.channels,
        max_outstanding=args.max_outstanding,
        verify_replies=not args.no_verify,
    )
    try:
        result = run_scenario(args.target, scenario)
    except LoadGenError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
