"""Overload at N x the sustainable rate, offered by h2load; latency per status code sampled.

    python -m bench.h2load_overload [--factor 10] [--images 64] [--duration 10]

The server runs pinned to the first half of the CPUs, h2load and this script to the rest.
Phases, each against the same server process:

1. unloaded: a probe (one gRPC call at a time, `--images` images each) alone: p50/p99;
2. sustainable: h2load at full speed with as many calls at once as the queue holds (1
   connection, max-queue-size / images streams) for `--duration` s; the sustainable rate
   is the server's OK replies per second (from /metrics), nothing shed;
3. overload: h2load offering `--factor` x that rate (`--rps` per connection) for
   `--duration` s, while the probe keeps calling: h2load sees only HTTP 200 (gRPC status
   travels in trailers), so the probe's calls give the latency per status code (OK vs
   RESOURCE_EXHAUSTED); the server's counters give the split of h2load's calls.

Reported (JSON): the rates, the probe's p50/p99 per code, the criteria (rejection p99 < 5
ms, accepted p99 <= 3 x unloaded p99, RSS growth < 50 MB) and the server's RSS before
and after. The probe is a Python client: its own overhead (~0.1-0.3 ms per call) is in
every figure it reports, unloaded and loaded alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from bench import h2load
from bench.processes import ServiceProcess, python_module_command
from bench.scenarios import Api
from bench.stats import percentile as nearest_rank
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 4
OVERLOAD_STREAMS_PER_CONNECTION = 256
READY_TIMEOUT_S = 120.0
PROBE_PAUSE_S = 0.02
PROBE_TIMEOUT_S = 5.0
UNLOADED_PROBES = 300
REJECTION_P99_LIMIT_MS = 5.0
ACCEPTED_P99_FACTOR = 3.0
RSS_GROWTH_LIMIT_MB = 50.0
H2LOAD_TIMEOUT_MARGIN_S = 60.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float | None:
    return nearest_rank(sorted(values), 100 * fraction) if values else None


class Probe:
    """One call at a time on its own channel; latency (ms) per status code."""

    def __init__(self, target: str, request: pb.ModelInferRequest) -> None:
        self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.GRPCInferenceServiceStub(self._channel)
        self._request = request
        self.latencies: dict[str, list[float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def call(self) -> None:
        started = time.perf_counter()
        try:
            self._stub.ModelInfer(self._request, timeout=PROBE_TIMEOUT_S)
            code = "OK"
        except grpc.RpcError as error:
            code = error.code().name
        self.latencies.setdefault(code, []).append(1000 * (time.perf_counter() - started))

    def run(self, count: int) -> None:
        for _ in range(count):
            self.call()

    def start_background(self) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                self.call()
                time.sleep(PROBE_PAUSE_S)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_background(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=PROBE_TIMEOUT_S * 2)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        return {
            code: {
                "n": len(values),
                "p50_ms": percentile(values, 0.5),
                "p99_ms": percentile(values, 0.99),
            }
            for code, values in sorted(self.latencies.items())
        }

    def close(self) -> None:
        self._channel.close()


def run_h2load(
    port: int,
    body: h2load.Request,
    duration_s: float,
    connections: int,
    streams: int,
    rps: float | None,
) -> h2load.H2loadReport:
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body.body)
        command = [
            h2load.require_h2load(), "-c", str(connections), "-m", str(streams),
            "-D", f"{round(duration_s)}s", "-d", str(body_file),
            *body.header_args(),
        ]  # fmt: skip
        if rps is not None:
            command.append(f"--rps={max(rps, 1.0):.1f}")
        command.append(f"http://127.0.0.1:{port}{body.path}")
        return h2load.run_h2load(command, duration_s + H2LOAD_TIMEOUT_MARGIN_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--max-queue-size", type=int, default=128)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path)
    parser.add_argument(
        "--profile",
        type=Path,
        help="record the server with py-spy during the overload phase (collapsed stacks here)",
    )
    args = parser.parse_args()
    try:
        h2load.require_h2load()
    except h2load.H2loadError as error:
        raise SystemExit(str(error)) from None
    cpus = sorted(os.sched_getaffinity(0))
    half = max(1, len(cpus) // 2)
    server_cpus, client_cpus = cpus[:half], cpus[half:] or cpus
    os.sched_setaffinity(0, client_cpus)  # this script, its probe and h2load
    body = h2load.build_request(Api.GRPC_V2, args.images)
    # The probe's request: the message inside h2load's gRPC frame.
    request = pb.ModelInferRequest.FromString(body.body[h2load.GRPC_FRAME.size :])
    report: dict[str, Any] = {
        "images_per_call": args.images,
        "server_cpus": server_cpus,
        "client_cpus": client_cpus,
        "load_average_at_start": os.getloadavg(),
    }
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'server'}:{REPO_ROOT / 'client'}"}
    command = [
        "taskset", "-c", ",".join(map(str, server_cpus)),
        *python_module_command("mnist_serving_server"),
        "--model-repository", str(REPO_ROOT / "model_repository"),
        "--host", "127.0.0.1", "--port", "0", "--http-port=-1",
        "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--max-queue-size", str(args.max_queue_size),
        "--max-batch-size", str(args.max_batch_size),
        "--max-images-per-request", str(args.max_batch_size),
        "--intra-op-threads", "1", "--drain-delay-s", "0", "--log-level", "WARNING",
    ]  # fmt: skip
    logs = Path(tempfile.mkdtemp(prefix="h2load-overload-"))
    server = ServiceProcess(
        command,
        log_path=logs / "server.log",
        ready_timeout_s=READY_TIMEOUT_S,
        env=env,
        cwd=REPO_ROOT,
    )
    with server:
        port, pid = server.grpc_port, server.pid
        counts = h2load.server_counter(int(server.ready["metrics_port"]), Api.GRPC_V2)
        target = server.target

        unloaded = Probe(target, request)
        unloaded.run(UNLOADED_PROBES)
        report["unloaded"] = unloaded.summary()
        unloaded.close()

        before = counts()
        started = time.monotonic()
        # As many calls at once as the queue holds: the most it serves without shedding.
        run_h2load(port, body, args.duration, 1, max(1, args.max_queue_size // args.images), None)
        elapsed = time.monotonic() - started
        after = counts()
        sustainable = (after.get("OK", 0) - before.get("OK", 0)) / elapsed
        report["sustainable_calls_per_s"] = sustainable
        report["sustainable_rejected"] = after.get("RESOURCE_EXHAUSTED", 0) - before.get(
            "RESOURCE_EXHAUSTED", 0
        )

        rss_before = rss_mb(pid)
        offered = args.factor * sustainable
        loaded = Probe(target, request)
        before = counts()
        loaded.start_background()
        profiler = None
        if args.profile is not None:
            profiler = subprocess.Popen(
                ["py-spy", "record", "--pid", str(pid), "--duration", str(round(args.duration)),
                 "--format", "raw", "--output", str(args.profile), "--nonblocking"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        started = time.monotonic()
        run_h2load(
            port,
            body,
            args.duration,
            CONNECTIONS,
            OVERLOAD_STREAMS_PER_CONNECTION,
            offered / CONNECTIONS,
        )
        elapsed = time.monotonic() - started
        loaded.stop_background()
        if profiler is not None:
            profiler.wait(timeout=60)
        after = counts()
        rss_after = rss_mb(pid)
        loaded.close()
        split = {code: after.get(code, 0) - before.get(code, 0) for code in after}
        report["overload"] = {
            "offered_calls_per_s_target": offered,
            "answered_calls_per_s": sum(split.values()) / elapsed,
            "served_calls_per_s": split.get("OK", 0) / elapsed,
            "codes": split,
            "probe": loaded.summary(),
            "rss_mb_before": rss_before,
            "rss_mb_after": rss_after,
        }
    unloaded_p99 = report["unloaded"].get("OK", {}).get("p99_ms")
    probe = report["overload"]["probe"]
    rejection_p99 = probe.get("RESOURCE_EXHAUSTED", {}).get("p99_ms")
    accepted_p99 = probe.get("OK", {}).get("p99_ms")
    growth = report["overload"]["rss_mb_after"] - report["overload"]["rss_mb_before"]
    report["criteria"] = {
        "rejection_p99_ms": rejection_p99,
        "rejection_p99_met": rejection_p99 is not None and rejection_p99 < REJECTION_P99_LIMIT_MS,
        "accepted_over_unloaded_p99": (
            None if not (accepted_p99 and unloaded_p99) else accepted_p99 / unloaded_p99
        ),
        "accepted_p99_met": bool(
            accepted_p99 and unloaded_p99 and accepted_p99 <= ACCEPTED_P99_FACTOR * unloaded_p99
        ),
        "rss_growth_mb": growth,
        "rss_met": growth < RSS_GROWTH_LIMIT_MB,
        "answered_over_sustainable": report["overload"]["answered_calls_per_s"]
        / max(report["sustainable_calls_per_s"], 1e-9),
    }
    report["load_average_at_end"] = os.getloadavg()
    text = json.dumps(report, indent=2, default=statistics.mean)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
