"""Server CPU per single-image V2 request, two server builds side by side, driven by h2load.

    python -m bench.h2load_compare --baseline-source /path/to/old/checkout [--rounds 3]

h2load (Debian `nghttp2-client`, a C load generator costing a few µs per call) sends
`inference.GRPCInferenceService/ModelInfer` with one raw UINT8 28x28 image, 4 connections
x 16 streams, for `--duration` seconds per round. The two servers (this checkout's and the
baseline checkout's, each started from its own source tree) alternate, round after round,
so drift on a shared machine hits both. For each round: requests answered with HTTP 200
(h2load's count; gRPC errors travel in trailers, so the server's own `ModelInfer` OK
counter from /metrics is the proof of zero errors), and the server process's CPU
(utime + stime from /proc) over the window divided by the OK replies; also latency
percentiles (from h2load's per-request log) and the mean batch size (from /metrics).

`--echo` adds the bare grpc.aio echo server on uvloop (bench/echo_server.py, V2 method
path) to every round: the floor, in the same run. `--variant LABEL=ARGS` (repeatable)
adds this checkout's server started with other arguments (e.g. a setting under test).
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
BATCH_SAMPLE = re.compile(r"^mnist_serving_batch_size_(sum|count)\{[^}]*\} ([0-9.e+]+)$", re.M)
ECHO = "echo"
ENV_WORD = re.compile(r"^[A-Z][A-Z0-9_]*=")


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


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds (utime + stime) of each of the process's threads, by thread name (summed
    over threads that share a name); py-spy cannot see native threads (ONNX Runtime's pool,
    gRPC core's), /proc can."""
    totals: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:  # the thread ended
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return totals


def _metrics_text(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def ok_infers(metrics_port: int | None) -> float:
    if metrics_port is None:  # the echo server: no metrics (h2load's count is used)
        return 0.0
    return sum(
        float(value)
        for labels, value in OK_SAMPLE.findall(_metrics_text(metrics_port))
        if 'method="ModelInfer"' in labels and 'code="OK"' in labels
    )


def batch_totals(metrics_port: int | None) -> tuple[float, float]:
    """(images computed, batches) so far; (0, 0) for the echo server."""
    if metrics_port is None:
        return 0.0, 0.0
    totals = {"sum": 0.0, "count": 0.0}
    for kind, value in BATCH_SAMPLE.findall(_metrics_text(metrics_port)):
        totals[kind] += float(value)
    return totals["sum"], totals["count"]


def latency_percentiles(log: Path, since_epoch_s: float) -> dict[str, float]:
    """p50/p90/p99 in ms of the requests h2load started after `since_epoch_s`."""
    durations = []
    for line in log.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3 and int(fields[0]) >= since_epoch_s * 1e6:
            durations.append(int(fields[2]) / 1000.0)
    if not durations:
        return {}
    ordered = np.sort(np.array(durations))
    return {
        f"p{q}_ms": round(float(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]), 2)
        for q in (50, 90, 99)
    }


class Server:
    def __init__(self, label: str, source: Path, extra: list[str], workdir: Path) -> None:
        self.label = label
        ready = workdir / f"{label}.ready"
        ready.unlink(missing_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = f"{source / 'server'}{os.pathsep}{source / 'client'}"
        # NAME=VALUE words (upper-case NAME) are environment variables, the rest arguments.
        env.update(word.partition("=")[::2] for word in extra if ENV_WORD.match(word))
        extra = [word for word in extra if not ENV_WORD.match(word)]
        if label == ECHO:
            command = [
                sys.executable, "-m", "bench.echo_server", "--loop", "uvloop",
                "--port", "0", "--ready-file", str(ready),
            ]  # fmt: skip
            env["PYTHONPATH"] += f"{os.pathsep}{source}"
        else:
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
        self.metrics_port: int | None = (
            int(info["metrics_port"]) if info.get("metrics_port") is not None else None
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def measure(
    server: Server, body: Path, duration_s: float, warmup_s: float, log: Path
) -> dict[str, Any]:
    command = [
        "h2load", "-c", str(CONNECTIONS), "-m", str(STREAMS_PER_CONNECTION),
        "-D", f"{round(duration_s)}s", "--warm-up-time", f"{round(warmup_s)}s",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log}", f"http://127.0.0.1:{server.port}{METHOD_PATH}",
    ]  # fmt: skip
    ok_before = ok_infers(server.metrics_port)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    time.sleep(warmup_s)
    threads_start = thread_cpu_seconds(server.process.pid)
    cpu_start, ok_start, batches_start, started, started_epoch = (
        cpu_seconds(server.process.pid),
        ok_infers(server.metrics_port),
        batch_totals(server.metrics_port),
        time.monotonic(),
        time.time(),
    )
    output, _ = process.communicate(timeout=duration_s + warmup_s + 60)
    if process.returncode != 0:
        raise RuntimeError(f"h2load failed ({process.returncode}): {output[-2000:]}")
    threads_end = thread_cpu_seconds(server.process.pid)
    cpu_end, ok_end, batches_end, ended = (
        cpu_seconds(server.process.pid),
        ok_infers(server.metrics_port),
        batch_totals(server.metrics_port),
        time.monotonic(),
    )
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    replies = ok_end - ok_start
    if server.metrics_port is None and status:  # echo: h2load's 2xx over the measured window
        replies = float(status.group(1))
    images, batches = (end - start for end, start in zip(batches_end, batches_start, strict=True))
    return {
        "server": server.label,
        "ok_replies": replies,
        "req_per_s": round(replies / (ended - started), 1),
        "server_cpu_us_per_request": round(1e6 * (cpu_end - cpu_start) / max(replies, 1), 1),
        "mean_batch": round(images / batches, 2) if batches else None,
        **latency_percentiles(log, started_epoch),
        "thread_cpu_us_per_request": {
            name: round(1e6 * (seconds - threads_start.get(name, 0.0)) / max(replies, 1), 1)
            for name, seconds in sorted(threads_end.items(), key=lambda item: -item[1])
            if seconds - threads_start.get(name, 0.0) > 0
        },
        "h2load_2xx": int(status.group(1)) if status else None,
        "h2load_non_2xx": sum(int(status.group(i)) for i in (2, 3, 4)) if status else None,
        "ok_total_during_run": ok_infers(server.metrics_port) - ok_before,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-source", type=Path, required=True)
    parser.add_argument("--baseline-args", default="")
    parser.add_argument("--candidate-args", default="")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=ARGS",
        help="also this checkout's server with ARGS, labelled LABEL (repeatable)",
    )
    parser.add_argument("--echo", action="store_true", help="the uvloop echo floor too")
    parser.add_argument("--no-baseline", action="store_true", help="skip the baseline")
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
        if args.no_baseline:
            servers = servers[1:]
        for variant in args.variant:
            label, _, extra = variant.partition("=")
            servers.append((label, REPO_ROOT, extra.split()))
        if args.echo:
            servers.append((ECHO, REPO_ROOT, []))
        for round_index in range(args.rounds):
            for label, source, extra in servers:
                server = Server(label, source, extra, workdir)
                try:
                    row = measure(server, body, args.duration, args.warmup, workdir / "h2load.log")
                finally:
                    server.stop()
                row["round"] = round_index
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {}
    for label, _, _ in servers:
        cpu = [r["server_cpu_us_per_request"] for r in rows if r["server"] == label]
        rps = [r["req_per_s"] for r in rows if r["server"] == label]
        p99 = [r["p99_ms"] for r in rows if r["server"] == label and "p99_ms" in r]
        summary[label] = {
            "cpu_us_median": statistics.median(cpu),
            "req_s_median": statistics.median(rps),
            "p99_ms_median": statistics.median(p99) if p99 else None,
        }
    for label, _, _ in servers:
        if label in ("baseline", ECHO):
            continue
        for reference in ("baseline", ECHO):
            if reference in summary:
                summary[f"{label}_over_{reference}_cpu"] = round(
                    summary[label]["cpu_us_median"] / summary[reference]["cpu_us_median"], 3
                )
    print(json.dumps(summary, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
