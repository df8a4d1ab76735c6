"""Does a stream of large PNGs stall the other callers? p99 of single-image calls, with and
without a 4,000 x 4,000 PNG stream on another connection, two server builds side by side.

    python -m bench.decode_stall [--baseline-source /path/to/old/checkout] [--rounds 2]

Each server (this checkout's, and the baseline checkout's when given) serves with its
defaults. Probes: PROBE_CONNECTIONS connections, each sending one single-image V2
ModelInfer at a time, paced to PROBE_RATE calls/s in all (so the probes alone leave the
server idle most of the time). The stream: one connection sending Classify calls, one at a
time, each a 4,000 x 4,000 grayscale PNG (a digit's stroke on black: small on the wire,
16 M pixels decoded, the default --max-decoded-pixels). For each server: probe p50/p99
alone, then with the stream; the ratio p99 with / p99 alone is the figure (target <= 2).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from PIL import Image

from bench.h2load_compare import server_process
from bench.loadgen import V2_INPUT_NAME
from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
PNG_SIDE = 4000
PROBE_CONNECTIONS = 4
PROBE_RATE = 200.0  # calls/s over all probe connections
PHASE_S = 8.0
CALL_TIMEOUT_S = 30.0
LOCAL_POOL = [("grpc.use_local_subchannel_pool", 1)]


def large_png() -> bytes:
    """A 4,000 x 4,000 grayscale PNG: a thick white ring on black (compresses well)."""
    y, x = np.ogrid[:PNG_SIDE, :PNG_SIDE]
    radius = np.hypot(x - PNG_SIDE / 2, y - PNG_SIDE / 2)
    pixels = ((radius > PNG_SIDE * 0.25) & (radius < PNG_SIDE * 0.35)).astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def probe_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name=V2_INPUT_NAME, datatype="UINT8", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(bytes(784))
    return request


class Stream:
    """One connection sending the large PNG as Classify calls, one at a time, until stopped."""

    def __init__(self, target: str, png: bytes) -> None:
        self._request = classifier_pb2.ClassifyRequest(
            model_name="mnist", images=[classifier_pb2.Image(encoded=png)]
        )
        self._channel = grpc.insecure_channel(target, options=LOCAL_POOL)
        self._stop = threading.Event()
        self.sent = 0
        self.codes: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        stub = classifier_pb2_grpc.ClassifierStub(self._channel)
        while not self._stop.is_set():
            try:
                stub.Classify(self._request, timeout=CALL_TIMEOUT_S)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            self.codes[code] = self.codes.get(code, 0) + 1
            self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(CALL_TIMEOUT_S)
        self._channel.close()


def probe(target: str, duration_s: float) -> list[float]:
    """Latencies (ms) of paced single-image calls on PROBE_CONNECTIONS connections."""
    latencies: list[float] = []
    lock = threading.Lock()
    interval = PROBE_CONNECTIONS / PROBE_RATE
    request = probe_request()

    def run() -> None:
        with grpc.insecure_channel(target, options=LOCAL_POOL) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)  # connected and warm
            end = time.monotonic() + duration_s
            next_at = time.monotonic()
            while next_at < end:
                time.sleep(max(0.0, next_at - time.monotonic()))
                started = time.perf_counter()
                stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)
                next_at += interval

    threads = [threading.Thread(target=run) for _ in range(PROBE_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def measure(
    label: str, source: Path, png: bytes, workdir: Path, server_args: list[str]
) -> dict[str, Any]:
    with server_process(label, source, server_args, workdir, {}) as server:
        target = f"127.0.0.1:{server.grpc_port}"
        alone = probe(target, PHASE_S)
        stream = Stream(target, png)
        try:
            loaded = probe(target, PHASE_S)
        finally:
            stream.stop()
    p99_alone = percentile(alone, 99)
    p99_loaded = percentile(loaded, 99)
    return {
        "server": label,
        "p50_ms_alone": round(statistics.median(alone), 2),
        "p99_ms_alone": round(p99_alone, 2),
        "p50_ms_with_png_stream": round(statistics.median(loaded), 2),
        "p99_ms_with_png_stream": round(p99_loaded, 2),
        "p99_ratio": round(p99_loaded / p99_alone, 2),
        "png_calls": stream.sent,
        "png_codes": stream.codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-source", type=Path, help="an older checkout to compare")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--server-args", default="", help="for both servers, e.g. --workers 1")
    args = parser.parse_args()
    png = large_png()
    servers = [("this", REPO_ROOT)]
    if args.baseline_source is not None:
        servers.append(("baseline", args.baseline_source.resolve()))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as workdir:
        for _ in range(args.rounds):
            for label, source in servers:
                row = measure(label, source, png, Path(workdir), args.server_args.split())
                rows.append(row)
                print(json.dumps(rows[-1]), flush=True)
    print(f"png: {PNG_SIDE}x{PNG_SIDE}, {len(png)} bytes")


if __name__ == "__main__":
    main()
