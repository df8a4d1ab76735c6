"""Server CPU per request over HTTP/REST and over gRPC, one server process, driven by h2load.

    python -m bench.h2load_http [--duration 8] [--rounds 2] [--json]

h2load (Debian `nghttp2-client`, a C load generator) drives, round after round, in one run
(bench/h2load.py: a warm-up, then a fixed number of calls, every one proven OK by the
service's own counter):

- `http_binary_1`: POST /v2/models/mnist/infer, one UINT8 28x28 image in Triton's binary
  tensor data form, binary output (`--h1`, 64 keep-alive HTTP/1.1 connections);
- `grpc_1`: the same request as `inference.GRPCInferenceService/ModelInfer` with
  raw_input_contents (4 HTTP/2 connections x 16 streams = 64 in flight, as a gRPC client
  multiplexes);
- `http_json_64`: 64 images as a JSON `data` list, JSON output (`--h1`, 8 connections); its
  row also gives the model's own compute per request (mnist_serving_batch_compute_seconds);
- `asgi_echo`: for scale, a bare ASGI echo of the binary request on the same HTTP stack
  (bench/asgi_echo.py, its own process), `--h1`, 64 connections.

Per scenario: req/s, latency percentiles, and the service's process tree CPU (utime +
stime from /proc) over the window / OK replies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import h2load, plan
from bench.h2load import CountReader
from bench.processes import ServiceProcess, python_module_command
from bench.run import SERVER_BASE_ARGS, SERVER_MODULE
from bench.scenarios import Api, H2loadScenario

REPO_ROOT = Path(__file__).resolve().parent.parent
JSON_CONNECTIONS = 8
JSON_IMAGES = 64
COMPUTE_SUM = "mnist_serving_batch_compute_seconds_sum"


@dataclass(frozen=True)
class Target:
    """Where a scenario's calls go and how their replies are counted."""

    service: ServiceProcess
    counter: Callable[[Api], CountReader]
    extra: h2load.Sampler | None = None


def metric_sum(metrics_port: int, name: str) -> float:
    text = h2load.scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def scenarios(duration_s: float, warmup_s: float) -> dict[str, tuple[H2loadScenario, str]]:
    """name -> (scenario, which target: "server" or "echo")."""
    settings = plan.BenchSettings(duration_s=duration_s, warmup_s=warmup_s)
    json_64 = H2loadScenario(
        name="http_json_64",
        api=Api.HTTP_JSON_V2,
        connections=JSON_CONNECTIONS,
        duration_s=duration_s,
        warmup_s=warmup_s,
        images_per_request=JSON_IMAGES,
    )
    return {
        "http_binary_1": (
            plan.h2load_scenario(settings, "http_binary_1", Api.HTTP_BINARY_V2),
            "server",
        ),
        "grpc_1": (plan.h2load_scenario(settings, "grpc_1", Api.GRPC_V2), "server"),
        "http_json_64": (json_64, "server"),
        "asgi_echo": (plan.h2load_scenario(settings, "asgi_echo", Api.HTTP_BINARY_V2), "echo"),
    }


def run_rows(
    targets: Mapping[str, Target], duration_s: float, warmup_s: float, rounds: int
) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for round_index in range(rounds):
        for name, (scenario, where) in scenarios(duration_s, warmup_s).items():
            target = targets[where]
            port_key = "grpc_port" if scenario.api.is_grpc else "http_port"
            row = h2load.measure(
                scenario,
                int(target.service.ready[port_key]),
                counter=target.counter(scenario.api),
                cpu_seconds=target.service.cpu_seconds,
                extra=target.extra if where == "server" else None,
            )
            problem = h2load.row_problem(row)
            if problem is not None:
                raise SystemExit(f"{name}: {problem}")
            rows.setdefault(name, []).append(row)
            print(f"round {round_index + 1} {name}: {h2load.describe_row(row)}", flush=True)
    return rows


def print_summary(rows: Mapping[str, list[dict[str, Any]]]) -> None:
    print()
    header = ("scenario", "req/s", "p99 ms", "server CPU µs/req", "model µs/req")
    print("{:<16} {:>9} {:>8} {:>18} {:>13}".format(*header))
    medians: dict[str, float] = {}
    for name, measured in rows.items():
        rate = statistics.median(r["requests_per_s"] for r in measured)
        p99 = statistics.median((r["latency_ms"] or {}).get("p99_ms", 0.0) for r in measured)
        cpu = statistics.median(r["server_cpu_us_per_request"] for r in measured)
        medians[name] = cpu
        model = [
            1e6 * r["window_deltas"][COMPUTE_SUM] / r["requests_ok"]
            for r in measured
            if COMPUTE_SUM in r["window_deltas"] and r["requests_ok"]
        ]
        model_text = f"{statistics.median(model):13.0f}" if model else f"{'':>13}"
        print(f"{name:<16} {rate:9.0f} {p99:8.2f} {cpu:18.0f} {model_text}")
    if "grpc_1" in medians and "http_binary_1" in medians:
        ratio = medians["http_binary_1"] / medians["grpc_1"]
        print(f"\nHTTP binary / gRPC per-request CPU: {ratio:.2f}")
    if "asgi_echo" in medians and "http_binary_1" in medians:
        ratio = medians["http_binary_1"] / medians["asgi_echo"]
        print(f"HTTP binary / ASGI echo per-request CPU: {ratio:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON too")
    args = parser.parse_args()
    try:
        h2load.require_h2load()
    except h2load.H2loadError as error:
        raise SystemExit(str(error)) from None
    logs = Path(tempfile.mkdtemp(prefix="h2load-http-"))
    server = ServiceProcess(
        python_module_command(
            SERVER_MODULE,
            "--model-repository", str(REPO_ROOT / "model_repository"),
            *SERVER_BASE_ARGS, "--metrics-host", "127.0.0.1", "--log-level", "WARNING",
        ),
        log_path=logs / "server.log",
    )  # fmt: skip
    echo = ServiceProcess(python_module_command("bench.asgi_echo"), log_path=logs / "echo.log")
    with server, echo:
        metrics_port = int(server.ready["metrics_port"])
        targets = {
            "server": Target(
                server,
                lambda api: h2load.server_counter(metrics_port, api),
                lambda: {COMPUTE_SUM: metric_sum(metrics_port, COMPUTE_SUM)},
            ),
            "echo": Target(
                echo, lambda api: h2load.http_echo_counter(int(echo.ready["http_port"]))
            ),
        }
        rows = run_rows(targets, args.duration, args.warmup, args.rounds)
    print_summary(rows)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
