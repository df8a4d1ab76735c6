"""A bounded ModelInfer load against a server process: threads on connections of their
own, each call's code, the version that answered and when each call succeeded."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from tests.integration.v2.v2_helpers import raw_infer_request
from tests.repository_models import PROBABILITIES, answered_by, reference_probabilities
from tests.support.channels import open_channels

LOAD_THREADS = 4
# The load runs until stopped; these bound it whatever happens.
LOAD_LIMIT_CALLS_PER_THREAD = 100_000
LOAD_LIMIT_S = 120.0
RPC_TIMEOUT_S = 30.0
WAIT_STEP_S = 0.1


def served_probabilities(reply: pb.ModelInferResponse) -> np.ndarray:
    """The probabilities output of a raw V2 reply, as float32 [n, classes]."""
    (index,) = [i for i, out in enumerate(reply.outputs) if out.name == PROBABILITIES]
    shape = tuple(reply.outputs[index].shape)
    return np.frombuffer(reply.raw_output_contents[index], dtype="<f4").reshape(shape)


class ModelInferLoad:
    """Threads calling ModelInfer (latest version) with one image until stopped."""

    def __init__(self, target: str, image: np.ndarray, threads: int = LOAD_THREADS) -> None:
        self._image = image[None]
        self._request = raw_infer_request(self._image)
        # Per version, the probabilities it computes for the image (set with `expect`).
        self.references: dict[str, np.ndarray] = {}
        # Calls whose probabilities are not those of the version the reply names.
        self.mismatches: list[str] = []
        self._channels = open_channels(target, threads)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.codes: Counter[str] = Counter()
        self.versions: Counter[str] = Counter()
        self.successes: list[float] = []
        """time.monotonic() of each call that succeeded."""
        self._threads = [
            threading.Thread(target=self._run, args=(channel,), daemon=True)
            for channel in self._channels
        ]
        for thread in self._threads:
            thread.start()

    def expect(self, model_files: dict[str, Path]) -> None:
        """Check every later answer against these versions' own outputs."""
        references = {v: reference_probabilities(f, self._image) for v, f in model_files.items()}
        with self._lock:
            self.references = references

    def calls(self) -> int:
        with self._lock:
            return sum(self.codes.values())

    def succeeded_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for at in self.successes if start <= at <= end)

    def wait_for(self, calls: int) -> None:
        deadline = time.monotonic() + LOAD_LIMIT_S
        while self.calls() < calls and time.monotonic() < deadline:
            time.sleep(WAIT_STEP_S)
        assert self.calls() >= calls, self.codes

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=LOAD_LIMIT_S)
        for channel in self._channels:
            channel.close()

    def _run(self, channel: grpc.Channel) -> None:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + LOAD_LIMIT_S
        for _ in range(LOAD_LIMIT_CALLS_PER_THREAD):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                reply = stub.ModelInfer(self._request, timeout=RPC_TIMEOUT_S)
                code, version = "OK", reply.model_version
            except grpc.RpcError as error:
                code, version = error.code().name, ""
            with self._lock:
                self.codes[code] += 1
                self.versions[version] += 1
                if code == "OK":
                    self.successes.append(time.monotonic())
                    if self.references:
                        self._check(reply, version)

    def _check(self, reply: pb.ModelInferResponse, version: str) -> None:
        try:
            computed = answered_by(served_probabilities(reply), self.references)
        except AssertionError as error:
            computed = str(error)
        if computed != version:
            self.mismatches.append(f"says {version}, computed by {computed}")
