"""Server CPU per single-image V2 request, two server builds side by side, driven by h2load.

    python -m bench.h2load_compare --baseline-source /path/to/old/checkout [--rounds 3]

h2load (Debian `nghttp2-client`, a C load generator costing a few µs per call) sends
`inference.GRPCInferenceService/ModelInfer` with one raw UINT8 28x28 image, 4 connections
x 16 streams, for about `--duration` seconds per round (bench/h2load.py: a warm-up, then
a fixed number of calls). The two servers (this checkout's and the baseline checkout's,
each started from its own source tree) alternate, round after round, so drift on a
shared machine hits both. For each round: the OK replies (the server's own `ModelInfer`
OK counter from /metrics: gRPC errors travel in trailers, which h2load does not read),
req/s, latency percentiles, and the server's process tree CPU over the window divided by
the OK replies.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import h2load, plan
from bench.processes import ServiceProcess, python_module_command
from bench.scenarios import Api, H2loadScenario

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0


def server_process(label: str, source: Path, extra: list[str], workdir: Path) -> ServiceProcess:
    """A server run from `source`'s tree (its server/ and client/ on PYTHONPATH); `with`
    starts and stops it."""
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{source / 'server'}{os.pathsep}{source / 'client'}"
    command = python_module_command(
        "mnist_serving_server",
        "--model-repository", str(REPO_ROOT / "model_repository"),
        "--host", "127.0.0.1", "--port", "0",
        "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--log-level", "WARNING", *extra,
    )  # fmt: skip
    return ServiceProcess(
        command,
        log_path=workdir / f"{label}.log",
        ready_timeout_s=READY_TIMEOUT_S,
        env=env,
        cwd=source,
    )


def measure(server: ServiceProcess, label: str, scenario: H2loadScenario) -> dict[str, Any]:
    row = h2load.measure(
        scenario,
        server.grpc_port,
        counter=h2load.server_counter(int(server.ready["metrics_port"]), scenario.api),
        cpu_seconds=server.cpu_seconds,
    )
    problem = h2load.row_problem(row)
    if problem is not None:
        raise SystemExit(f"{label}: {problem}")
    latency = row["latency_ms"] or {}
    return {
        "server": label,
        "ok_replies": row["requests_ok"],
        "req_per_s": row["requests_per_s"],
        "server_cpu_us_per_request": row["server_cpu_us_per_request"],
        "p50_ms": latency.get("p50_ms"),
        "p99_ms": latency.get("p99_ms"),
        "errors": row["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-source", type=Path, required=True)
    parser.add_argument("--baseline-args", default="--model-name mnist")
    parser.add_argument("--candidate-args", default="--http-port 0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    try:
        h2load.require_h2load()
    except h2load.H2loadError as error:
        raise SystemExit(str(error)) from None
    settings = plan.BenchSettings(duration_s=args.duration, warmup_s=args.warmup)
    scenario = plan.h2load_scenario(settings, plan.H2LOAD_V2_NAME, Api.GRPC_V2)
    rows: list[dict[str, Any]] = []
    servers = [
        ("baseline", args.baseline_source, args.baseline_args.split()),
        ("candidate", REPO_ROOT, args.candidate_args.split()),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for label, source, extra in servers:
                with server_process(label, source, extra, Path(tmp)) as server:
                    row = measure(server, label, scenario)
                row["round"] = round_index
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary: dict[str, Any] = {}
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
    sys.exit(main())
