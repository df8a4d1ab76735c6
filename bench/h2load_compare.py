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

`--echo` adds the bare grpc.aio echo server (bench/echo_server.py, V2 method path, on the
server's loop) to every round: the floor, in the same run; `--native-echo` the bare
pygrpc-native echo (bench/native_echo.py), the floor of the native front; `--minimal-path`
the minimal full path (bench/minimal_path.py). `--variant LABEL=ARGS`
(repeatable) adds this checkout's server started with other arguments; upper-case
`NAME=VALUE` words in ARGS are set as environment variables instead. `--no-baseline`
leaves the baseline checkout out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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
ECHO = "echo"
NATIVE_ECHO = "native_echo"
MINIMAL_PATH = "minimal_path"
ECHOES = {
    ECHO: "bench.echo_server",
    NATIVE_ECHO: "bench.native_echo",
    MINIMAL_PATH: "bench.minimal_path",
}
ENV_WORD = re.compile(r"^[A-Z][A-Z0-9_]*=")


def split_variant(spec: str) -> tuple[str, list[str], dict[str, str]]:
    """ "LABEL=ARGS" -> (label, server arguments, environment variables)."""
    label, separator, rest = spec.partition("=")
    if not separator or not label:
        raise SystemExit(f"--variant takes LABEL=ARGS, got {spec!r}")
    words = rest.split()
    env = dict(word.split("=", 1) for word in words if ENV_WORD.match(word))
    return label, [word for word in words if not ENV_WORD.match(word)], env


def server_process(
    label: str, source: Path, extra: list[str], workdir: Path, extra_env: dict[str, str]
) -> ServiceProcess:
    """A server run from `source`'s tree (its server/ and client/ on PYTHONPATH); `with`
    starts and stops it."""
    env = {**os.environ, **extra_env}
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


def echo_process(workdir: Path, label: str) -> ServiceProcess:
    return ServiceProcess(
        python_module_command(ECHOES[label], "--port", "0"),
        log_path=workdir / f"{label}.log",
        ready_timeout_s=READY_TIMEOUT_S,
    )


def measure(server: ServiceProcess, label: str, scenario: H2loadScenario) -> dict[str, Any]:
    counter = (
        h2load.grpc_echo_counter(server.target)
        if label in ECHOES
        else h2load.server_counter(int(server.ready["metrics_port"]), scenario.api)
    )
    row = h2load.measure(
        scenario, server.grpc_port, counter=counter, cpu_seconds=server.cpu_seconds
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
        "mean_batch": row.get("mean_batch_size"),
        "errors": row["errors"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-source", type=Path)
    parser.add_argument("--baseline-args", default="")
    parser.add_argument("--candidate-args", default="--http-port 0")
    parser.add_argument("--no-baseline", action="store_true", help="leave the baseline out")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=ARGS",
        help="this checkout's server with other arguments, measured in every round",
    )
    parser.add_argument("--echo", action="store_true", help="the echo floor in every round")
    parser.add_argument(
        "--native-echo", action="store_true", help="the native (pygrpc-native) echo floor too"
    )
    parser.add_argument(
        "--minimal-path", action="store_true", help="the minimal full path's floor too"
    )
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
    if not args.no_baseline and args.baseline_source is None:
        parser.error("--baseline-source is required unless --no-baseline")
    servers: list[tuple[str, Path, list[str], dict[str, str]]] = []
    if not args.no_baseline:
        servers.append(("baseline", args.baseline_source, args.baseline_args.split(), {}))
    servers.append(("candidate", REPO_ROOT, args.candidate_args.split(), {}))
    for spec in args.variant:
        label, extra, env = split_variant(spec)
        servers.append((label, REPO_ROOT, ["--http-port", "0", *extra], env))
    if args.echo:
        servers.append((ECHO, REPO_ROOT, [], {}))
    if args.native_echo:
        servers.append((NATIVE_ECHO, REPO_ROOT, [], {}))
    if args.minimal_path:
        servers.append((MINIMAL_PATH, REPO_ROOT, [], {}))
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for label, source, extra, env in servers:
                process = (
                    echo_process(Path(tmp), label)
                    if label in ECHOES
                    else server_process(label, source, extra, Path(tmp), env)
                )
                with process as server:
                    row = measure(server, label, scenario)
                row["round"] = round_index
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary: dict[str, Any] = {}
    for label, _, _, _ in servers:
        cpu = [r["server_cpu_us_per_request"] for r in rows if r["server"] == label]
        rps = [r["req_per_s"] for r in rows if r["server"] == label]
        summary[label] = {
            "cpu_us_median": statistics.median(cpu),
            "req_s_median": statistics.median(rps),
        }
    for label in summary.copy():
        references = ("baseline", *ECHOES, *(v.split("=")[0] for v in args.variant))
        for reference in references:
            if reference in summary and label != reference:
                ratio = summary[label]["cpu_us_median"] / summary[reference]["cpu_us_median"]
                summary[f"{label}_over_{reference}_cpu"] = ratio
    print(json.dumps(summary, indent=2))
    if args.output is not None:
        args.output.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
