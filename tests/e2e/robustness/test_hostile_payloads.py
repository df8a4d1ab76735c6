"""Hostile clients against the server as `make serve` runs it (`--workers auto`, default
front): streams that declare a 1 GiB ModelInfer are refused having sent little, and the
server's memory stays bounded meanwhile; it serves right after.

The streams are curl's HTTP/2 uploads of a sparse file whose gRPC length prefix declares
1 GiB: curl reads it as flow control allows, so the test itself holds no such message.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from tests.integration.v2.v2_helpers import output_array, raw_infer_request
from tests.support.processes import rss_bytes, worker_pids
from tests.support.server_process import ServerProcess, start_server_process
from tests.support.waiting import wait_for

GIB = 1 << 30
MIB = 1 << 20
STREAMS = 6
# The bar: the server group's RSS stays under its baseline + 512 MB throughout.
RSS_HEADROOM_BYTES = 512 * 1_000_000
# A refused stream may have pushed what flow control let it before the refusal arrived.
MAX_UPLOAD_BEFORE_REFUSAL = 64 * MIB
# Refused "before the body": what curl pushes before it reads the headers-only answer.
MAX_UPLOAD_BEFORE_AUTH_REFUSAL = 8 * MIB
CURL_TIMEOUT_S = 120
RSS_POLL_S = 0.05
RPC_TIMEOUT_S = 30
START_TIMEOUT_S = 120
TOKEN = "hostile-payload-test-token-0123456789"
MODEL_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"
CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def declared_gib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse 1 GiB file: a gRPC frame header declaring 1 GiB - 5 bytes, then zeros."""
    path = tmp_path_factory.mktemp("hostile") / "one-gib.grpc"
    with path.open("wb") as frame:
        frame.write(b"\x00" + struct.pack(">I", GIB - 5))
        frame.truncate(GIB)
    return path


@pytest.fixture
def server(model_repository: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """`make serve`'s defaults; a parametrized test turns tokens on and adds flags."""
    tokens, extra = getattr(request, "param", (False, ()))
    env = {"MNIST_SERVING_AUTH_TOKEN": TOKEN} if tokens else None
    with start_server_process(
        model_repository, "--workers", "auto", *extra, env=env, timeout_s=START_TIMEOUT_S
    ) as process:
        yield process


def group_rss(server: ServerProcess) -> int:
    return rss_bytes(server.pid) + sum(rss_bytes(pid) for pid in worker_pids(server))


class RssWatch:
    """The server group's highest RSS while it runs (polled: no event tells it)."""

    def __init__(self, server: ServerProcess) -> None:
        self._server = server
        self.peak = group_rss(server)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_POLL_S):
            self.peak = max(self.peak, group_rss(self._server))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def upload(target: str, body: Path, *headers: str) -> subprocess.Popen[str]:
    """curl posting `body` as one gRPC call over HTTP/2 (prior knowledge); prints the bytes
    it uploaded."""
    assert CURL is not None, "curl is missing: make test installs it (requirements/debian.txt)"
    command = [CURL, "--silent", "--http2-prior-knowledge", "--max-time", str(CURL_TIMEOUT_S)]
    command += ["--request", "POST", "--upload-file", str(body), "--output", "/dev/null"]
    command += ["--header", "content-type: application/grpc", "--header", "te: trailers"]
    for header in headers:
        command += ["--header", header]
    command += ["--write-out", "%{size_upload}", f"http://{target}{MODEL_INFER_PATH}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def send_hostile_streams(server: ServerProcess, body: Path, *headers: str) -> tuple[list[int], int]:
    """STREAMS uploads at once; the bytes each sent before the server ended it, and the
    group's peak RSS meanwhile."""
    watch = RssWatch(server)
    try:
        uploads = [upload(server.target, body, *headers) for _ in range(STREAMS)]
        sent = [
            int(process.communicate(timeout=CURL_TIMEOUT_S + 10)[0] or 0) for process in uploads
        ]
    finally:
        peak = watch.stop()
    return sent, peak


def assert_serving_and_right(server: ServerProcess, digits: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = digits
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    with grpc.insecure_channel(server.target) as channel:
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            raw_infer_request(images[:16]), timeout=RPC_TIMEOUT_S, metadata=metadata
        )
    assert (output_array(reply, "probabilities").argmax(axis=1) == labels[:16]).all()


def test_six_one_gib_streams_are_refused_with_memory_bounded(
    server: ServerProcess, declared_gib: Path, sample_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    baseline = group_rss(server)
    sent, peak = send_hostile_streams(server, declared_gib)
    assert all(0 < size <= MAX_UPLOAD_BEFORE_REFUSAL for size in sent), sent
    assert peak < baseline + RSS_HEADROOM_BYTES, (baseline, peak)
    assert_serving_and_right(server, sample_digits)
    assert "serving gRPC with grpcio" in server.output()  # auto: no unbounded front


@pytest.mark.parametrize(
    "server",
    [(True, ("--auth-exempt-services", "none")), (True, ())],
    ids=["native-front-token-check", "grpcio-front-token-interceptor"],
    indirect=True,
)
def test_unauthenticated_streams_are_refused_before_their_body(
    server: ServerProcess, declared_gib: Path, sample_digits: tuple[np.ndarray, np.ndarray]
) -> None:
    baseline = group_rss(server)
    sent, peak = send_hostile_streams(server, declared_gib)
    assert all(size <= MAX_UPLOAD_BEFORE_AUTH_REFUSAL for size in sent), sent
    assert peak < baseline + RSS_HEADROOM_BYTES, (baseline, peak)
    # A token holder is served, by the front `auto` chose for these settings.
    assert_serving_and_right(server, sample_digits)
    started = time.monotonic()
    with grpc.insecure_channel(server.target) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            raw_infer_request(sample_digits[0][:1]), timeout=RPC_TIMEOUT_S
        )
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < RPC_TIMEOUT_S


# A burst the limit lets through: BURST_CALLS at once, each a V2 call of BURST_BYTES that
# the server parses and then refuses (its shape does not match its data), BURST_ROUNDS times.
BURST_CALLS = 6
BURST_BYTES = 15 * MIB
BURST_ROUNDS = 3
# Measured 2026-12-08 (three processes): +519 MB stayed before the trimmer, +153 MB after.
BURST_RESIDUE_BYTES = 256 * 1_000_000
# The burst must have taken memory for the test to tell anything (on a busy machine the
# six calls may be parsed one after another, so the peak is lower than the +519 MB above).
BURST_MIN_PEAK_BYTES = 128 * 1_000_000
BURST_SETTLE_S = 60.0


def burst_request() -> pb.ModelInferRequest:
    request = raw_infer_request(np.zeros((1, 28, 28), dtype=np.uint8))
    request.raw_input_contents[0] = bytes(BURST_BYTES)  # not 784 bytes: INVALID_ARGUMENT
    return request


def test_memory_a_burst_took_goes_back(server: ServerProcess) -> None:
    baseline = group_rss(server)
    payload = burst_request()
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", -1)]
    codes: list[grpc.StatusCode] = []

    def call() -> None:
        with grpc.insecure_channel(server.target, options=options) as channel:
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(payload, timeout=RPC_TIMEOUT_S)
            except grpc.RpcError as error:
                codes.append(error.code())

    watch = RssWatch(server)
    try:
        for _ in range(BURST_ROUNDS):
            callers = [threading.Thread(target=call) for _ in range(BURST_CALLS)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
    finally:
        peak = watch.stop()
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * (BURST_CALLS * BURST_ROUNDS)
    assert peak > baseline + BURST_MIN_PEAK_BYTES, ("the burst took too little", baseline, peak)
    settled = wait_for(
        lambda: True if group_rss(server) < baseline + BURST_RESIDUE_BYTES else None,
        BURST_SETTLE_S,
        "the server's memory to go back after the burst",
    )
    assert settled
