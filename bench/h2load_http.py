"""Server CPU per request over HTTP/REST and over gRPC, one server process, driven by h2load.

    python -m bench.h2load_http [--duration 8] [--rounds 2] [--json]

h2load (Debian `nghttp2-client`, a C load generator) drives, round after round, in one run:

- `http_binary_1`: POST /v2/models/mnist/infer, one UINT8 28x28 image in Triton's binary
  tensor data form, binary output (`--h1`, 64 keep-alive HTTP/1.1 connections);
- `grpc_1`: the same request as `inference.GRPCInferenceService/ModelInfer` with
  raw_input_contents (4 HTTP/2 connections x 16 streams = 64 in flight, as a gRPC client
  multiplexes);
- `http_json_64`: 64 images as a JSON `data` list, JSON output (`--h1`, 8 connections); its
  row also gives the model's own compute per request (mnist_serving_batch_compute_seconds);
- `asgi_echo_800`: for scale, a bare ASGI echo of 800 bytes on the same HTTP stack
  (bench/asgi_echo.py, its own process), `--h1`, 64 connections.

Per scenario: OK replies (the server's ModelInfer OK counter; h2load's 2xx for the echo),
and the server process's CPU (utime + stime from /proc) over the window / OK replies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench.h2load_compare import (
    METHOD_PATH,
    REPO_ROOT,
    cpu_seconds,
    grpc_body,
    ok_infers,
)

READY_TIMEOUT_S = 120.0
INFER_PATH = "/v2/models/mnist/infer"
HTTP_CONNECTIONS = 64
JSON_CONNECTIONS = 8
JSON_IMAGES = 64
ECHO_BYTES = 800


def binary_body(path: Path) -> int:
    """One image in Triton's binary form; returns the JSON header's length."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 1, 28, 28],
                    "parameters": {"binary_data_size": 784},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    path.write_bytes(header + np.zeros(784, dtype=np.uint8).tobytes())
    return len(header)


def json_body(path: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=images * 784).tolist()
    path.write_text(
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "pixels",
                        "datatype": "UINT8",
                        "shape": [images, 1, 28, 28],
                        "data": data,
                    }
                ]
            }
        )
    )


def metric_sum(metrics_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def wait_ready(process: subprocess.Popen[bytes], ready: Path, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)
    time.sleep(0.2)
    info: dict[str, Any] = json.loads(ready.read_text())
    return info


def h2load(
    args: list[str], duration_s: float, warmup_s: float
) -> tuple[subprocess.Popen[str], list[str]]:
    command = [
        "h2load", "-D", f"{round(duration_s)}s", "--warm-up-time", f"{round(warmup_s)}s", *args,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True), command


def run_window(
    pid: int,
    count: Any,
    args: list[str],
    duration_s: float,
    warmup_s: float,
    extra: Any = None,
) -> dict[str, Any]:
    process, command = h2load(args, duration_s, warmup_s)
    time.sleep(warmup_s)
    cpu0, ok0, t0 = cpu_seconds(pid), count(), time.monotonic()
    extra0 = extra() if extra else 0.0
    output, _ = process.communicate(timeout=duration_s + warmup_s + 60)
    cpu1, ok1, t1 = cpu_seconds(pid), count(output), time.monotonic()
    extra1 = extra() if extra else 0.0
    if process.returncode != 0:
        raise RuntimeError(f"h2load failed: {command}\n{output[-2000:]}")
    replies = ok1 - ok0
    row = {
        "ok_replies": replies,
        "req_per_s": replies / (t1 - t0),
        "server_cpu_us_per_request": 1e6 * (cpu1 - cpu0) / max(replies, 1),
        "h2load_status": next(
            (line.strip() for line in output.splitlines() if "status codes" in line), ""
        ),
    }
    if extra:
        row["model_compute_us_per_request"] = 1e6 * (extra1 - extra0) / max(replies, 1)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="h2load-http-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [
            str(REPO_ROOT / "server"),
            str(REPO_ROOT / "client"),
            str(REPO_ROOT),
            env.get("PYTHONPATH", ""),
        ]
    )
    ready = workdir / "server.ready"
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mnist_serving_server",
            "--model-repository", str(REPO_ROOT / "model_repository"),
            "--host", "127.0.0.1", "--port", "0", "--http-host", "127.0.0.1", "--http-port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--drain-delay-s", "0",
            "--ready-file", str(ready), "--log-level", "WARNING",
        ],
        env=env,
    )  # fmt: skip
    echo_ready = workdir / "echo.ready"
    echo = subprocess.Popen(
        [sys.executable, "-m", "bench.asgi_echo", "--ready-file", str(echo_ready)],
        env=env,
        cwd=REPO_ROOT,
    )
    rows: dict[str, list[dict[str, Any]]] = {}
    try:
        info = wait_ready(server, ready, "server")
        echo_info = wait_ready(echo, echo_ready, "echo")
        grpc_file, bin_file = workdir / "grpc.bin", workdir / "infer.bin"
        json_file, echo_file = workdir / "infer.json", workdir / "echo.bin"
        grpc_body(grpc_file)
        header_length = binary_body(bin_file)
        json_body(json_file, JSON_IMAGES)
        echo_file.write_bytes(os.urandom(ECHO_BYTES))
        http = f"http://127.0.0.1:{info['http_port']}{INFER_PATH}"
        metrics_port = int(info["metrics_port"])

        def ok(_output: str = "") -> float:
            return ok_infers(metrics_port)

        def echo_ok(output: str = "") -> float:
            for line in output.splitlines():
                if "status codes" in line:
                    return float(line.split()[2])
            return 0.0

        def compute() -> float:
            return metric_sum(metrics_port, "mnist_serving_batch_compute_seconds_sum")

        scenarios = {
            "http_binary_1": (server.pid, ok, [
                "--h1", "-c", str(HTTP_CONNECTIONS), "-m", "1", "-d", str(bin_file),
                "-H", "content-type: application/octet-stream",
                "-H", f"inference-header-content-length: {header_length}", http,
            ], None),
            "grpc_1": (server.pid, ok, [
                "-c", "4", "-m", "16", "-d", str(grpc_file),
                "-H", "content-type: application/grpc", "-H", "te: trailers",
                f"http://127.0.0.1:{info['grpc_port']}{METHOD_PATH}",
            ], None),
            "http_json_64": (server.pid, ok, [
                "--h1", "-c", str(JSON_CONNECTIONS), "-m", "1", "-d", str(json_file),
                "-H", "content-type: application/json", http,
            ], compute),
            "asgi_echo_800": (echo.pid, echo_ok, [
                "--h1", "-c", str(HTTP_CONNECTIONS), "-m", "1", "-d", str(echo_file),
                f"http://127.0.0.1:{echo_info['http_port']}/echo",
            ], None),
        }  # fmt: skip
        for round_index in range(args.rounds):
            for name, (pid, count, h2_args, extra) in scenarios.items():
                row = run_window(pid, count, h2_args, args.duration, args.warmup, extra)
                rows.setdefault(name, []).append(row)
                print(f"round {round_index + 1} {name}: {row}", flush=True)
    finally:
        for process in (server, echo):
            process.terminate()
            process.wait(timeout=60)
    print()
    print(f"{'scenario':<16} {'req/s':>9} {'server CPU µs/req':>18} {'model µs/req':>13}")
    medians: dict[str, float] = {}
    for name, measured in rows.items():
        rate = statistics.median(r["req_per_s"] for r in measured)
        cpu = statistics.median(r["server_cpu_us_per_request"] for r in measured)
        medians[name] = cpu
        model = [
            r["model_compute_us_per_request"]
            for r in measured
            if "model_compute_us_per_request" in r
        ]
        model_text = f"{statistics.median(model):13.0f}" if model else f"{'':>13}"
        print(f"{name:<16} {rate:9.0f} {cpu:18.0f} {model_text}")
    if "grpc_1" in medians and "http_binary_1" in medians:
        ratio = medians["http_binary_1"] / medians["grpc_1"]
        print(f"\nHTTP binary / gRPC per-request CPU: {ratio:.2f}")
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
