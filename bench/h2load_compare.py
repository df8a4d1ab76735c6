"""Server CPU per single-image V2 request, two server builds side by side, driven by h2load.

    python -m bench.h2load_compare --baseline-source /path/to/old/checkout [--rounds 3]

h2load (Debian `nghttp2-client`, a C load generator costing a few µs per call) sends
`inference.GRPCInferenceService/ModelInfer` with one raw UINT8 28x28 image, 4 connections
x 16 streams, for `--duration` seconds per round. The two servers (this checkout's and the
baseline checkout's, each started from its own source tree) alternate, round after round,
so drift on a shared machine hits both. For each round: requests answered with HTTP 200
(h2load's count; gRPC errors travel in trailers, so the server's own `ModelInfer` OK
counter from /metrics is the proof of zero errors), and the server process's CPU
(utime + stime from /proc) over the window divided by the OK replies.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from mnist_serving_proto import open_inference_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parent.parent
METHOD_PATH = "/inference.GRPCInferenceService/ModelInfer"
CONNECTIONS = 4
STREAMS_PER_CONNECTION = 16
READY_TIMEOUT_S = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OK_SAMPLE = re.compile(r"^mnist_serving_requests_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


def grpc_body(path: Path) -> None:
    """One gRPC message frame: 1 byte uncompressed flag, 4 bytes length, the request."""
    request = pb.ModelInferRequest(model_name="mnist")
    request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 1, 28, 28])
    request.raw_input_contents.append(np.zeros(784, dtype=np.uint8).tobytes())
    payload = request.SerializeToString()
    path.write_bytes(struct.pack(">BI", 0, len(payload)) + payload)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def ok_infers(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return sum(
        float(value)
        for labels, value in OK_SAMPLE.findall(text)
        if 'method="ModelInfer"' in labels and 'code="OK"' in labels
    )


class Server:
    def __init__(self, label: str, source: Path, extra: list[str], workdir: Path) -> None:
        self.label = label
        ready = workdir / f"{label}.ready"
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{source / 'server'}{os.pathsep}{source / 'client'}"
        command = [
            sys.executable, "-m", "mnist_serving_server",
            "--model-repository", str(REPO_ROOT / "model_repository"),
            "--host", "127.0.0.1", "--port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0",
            "--ready-file", str(ready), "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, env=env, cwd=source)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label} server did not start: {command}")
            time.sleep(0.1)
        info = json.loads(ready.read_text())
        self.port = int(info["grpc_port"])
        self.metrics_port = int(info["metrics_port"])

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def measure(server: Server, body: Path, duration_s: float, warmup_s: float) -> dict[str, Any]:
    command = [
        "h2load", "-c", str(CONNECTIONS), "-m", str(STREAMS_PER_CONNECTION),
        "-D", f"{round(duration_s)}s", "--warm-up-time", f"{round(warmup_s)}s",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{server.port}{METHOD_PATH}",
    ]  # fmt: skip
    ok_before = ok_infers(server.metrics_port)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(warmup_s)
    cpu_start, ok_start, started = (
        cpu_seconds(server.process.pid),
        ok_infers(server.metrics_port),
        time.monotonic(),
    )
    output, _ = process.communicate(timeout=duration_s + warmup_s + 60)
    if process.returncode != 0:
        raise RuntimeError(f"h2load failed ({process.returncode}): {output[-2000:]}")
    cpu_end, ok_end, ended = (
        cpu_seconds(server.process.pid),
        ok_infers(server.metrics_port),
        time.monotonic(),
    )
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    replies = ok_end - ok_start
    return {
        "server": server.label,
        "ok_replies": replies,
        "req_per_s": replies / (ended - started),
        "server_cpu_us_per_request": 1e6 * (cpu_end - cpu_start) / max(replies, 1),
        "h2load_2xx": int(status.group(1)) if status else None,
        "h2load_non_2xx": sum(int(status.group(i)) for i in (2, 3, 4)) if status else None,
        "ok_total_during_run": ok_infers(server.metrics_port) - ok_before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-source", type=Path, required=True)
    parser.add_argument("--baseline-args", default="--model-name mnist")
    parser.add_argument("--candidate-args", default="")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        body = workdir / "infer.grpc"
        grpc_body(body)
        servers = [
            ("baseline", args.baseline_source, args.baseline_args.split()),
            ("candidate", REPO_ROOT, args.candidate_args.split()),
        ]
        for round_index in range(args.rounds):
            for label, source, extra in servers:
                server = Server(label, source, extra, workdir)
                try:
                    row = measure(server, body, args.duration, args.warmup)
                finally:
                    server.stop()
                row["round"] = round_index
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for label, _, _ in servers:
        cpu = [r["server_cpu_us_per_request"] for r in rows if r["server"] == label]
        rps = [r["req_per_s"] for r in rows if r["server"] == label]
        summary[label] = {
            "cpu_us_median": statistics.median(cpu),
            "req_s_median": statistics.median(rps),
        }
    ratio = summary["candidate"]["cpu_us_median"] / summary["baseline"]["cpu_us_median"]
    summary["candidate_over_baseline_cpu"] = ratio
    print(json.dumps(summary, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
