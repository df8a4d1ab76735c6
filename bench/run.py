"""`make bench`: measure the ceilings and the server in one run, print one table, write docs.

Order: the in-process ONNX Runtime ceiling, then the bare grpc.aio echo server (the grpc.aio
front's floor), the bare pygrpc-native echo (the native front's floor) and the bare ASGI
echo (the HTTP floor), then each server configuration
(`--server-args`, repeatable: several configurations are compared in one run, e.g.
`--workers 1` against `--workers 2`; a configuration with `--tracing on` exports every
call's spans to an OTLP/HTTP sink the bench runs, bench/otlp_sink.py). Each service runs as
its own process. The
single-image unary rows (gRPC V2, Classify, HTTP binary V2) are driven by h2load, a C
client (bench/h2load.py); streams, multi-image and open-loop rows by separate Python
client processes (bench.loadgen). Results go to bench/results/ (JSON) and
docs/benchmarks.md (+ the latency-throughput plot).

Exit status: 0 when every scenario ran and got answers (missed targets are reported,
not failures); 1 when a service failed to start, a scenario could not run, a scenario
got no successful reply, or an h2load row's calls were not all answered OK by the
service's own counters; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench import h2load, plan
from bench.h2load import CountReader, H2loadError
from bench.loadgen import LoadGenError, run_scenario
from bench.ort_ceiling import DEFAULT_BATCH_SIZES, DEFAULT_SECONDS_PER_BATCH_SIZE
from bench.otlp_sink import DiscardingCollector
from bench.plan import BenchSettings
from bench.processes import ServiceProcess, ServiceStartError, python_module_command
from bench.report import (
    compute_ratios,
    plot_latency_throughput,
    render_docs_section,
    render_ratio_lines,
    render_table,
    tracing_on,
    write_docs,
)
from bench.results import RESULTS_SCHEMA_VERSION, validate_results_document
from bench.scenarios import Api, H2loadScenario, Scenario
from mnist_serving_server.core.cores import available_cores

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_DOCS = REPO_ROOT / "docs" / "benchmarks.md"
PLOT_NAME = "benchmarks_latency_throughput.png"
QUICK_ORT_SECONDS = 1.0
# ORT runs 4 batch sizes; allow for a slow, shared machine on top of that.
ORT_TIMEOUT_MARGIN_S = 120.0
BATCH_SIZE_METRIC = "mnist_serving_batch_size"
SERVER_MODULE = "mnist_serving_server"
# Shutdown speed only: the bench doesn't need the load-balancer drain delay.
SERVER_BASE_ARGS = (
    "--host",
    "127.0.0.1",
    "--port",
    "0",
    "--metrics-port",
    "0",
    "--http-port",
    "0",
    "--drain-delay-s",
    "0",
)
SERVER_READY_TIMEOUT_S = 180.0
EXIT_OK = 0
EXIT_FAILED = 1
DEFAULT_LABEL = "default"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--model-name", default="mnist")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"{plan.QUICK_DURATION_S:g} s per scenario, a shorter sweep",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per scenario")
    parser.add_argument("--warmup", type=float, help="unmeasured seconds before each scenario")
    parser.add_argument(
        "--client-processes",
        type=int,
        default=0,
        help="client processes per scenario (0 = one per core)",
    )
    parser.add_argument(
        "--server-args",
        action="append",
        metavar="ARGS",
        help='extra server flags as one string, e.g. --server-args="--workers 2"; repeat to '
        "compare configurations in one run (an empty string = the defaults)",
    )
    parser.add_argument("--skip-ort", action="store_true", help="skip the ONNX Runtime ceiling")
    parser.add_argument(
        "--skip-echo", action="store_true", help="skip the echo floors (gRPC and ASGI)"
    )
    parser.add_argument("--no-docs", action="store_true", help="don't rewrite docs/benchmarks.md")
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    for name in ("duration", "warmup"):
        value = getattr(args, name)
        if value is not None and (value < 0 or (name == "duration" and value == 0)):
            parser.error(f"--{name} must be positive")
    if args.client_processes < 0:
        parser.error("--client-processes must be >= 0")
    return args


def settings_from(args: argparse.Namespace) -> BenchSettings:
    overrides: dict[str, Any] = {
        "client_processes": args.client_processes,
        "cores": available_cores(),
        "model_name": args.model_name,
    }
    if args.duration is not None:
        overrides["duration_s"] = args.duration
    if args.warmup is not None:
        overrides["warmup_s"] = args.warmup
    return BenchSettings.quick(**overrides) if args.quick else BenchSettings(**overrides)


def server_configs(raw: Sequence[str] | None) -> list[tuple[str, list[str]]]:
    """(label, argv) per --server-args; labels are unique."""
    configs: list[tuple[str, list[str]]] = []
    for text in raw or [""]:
        argv = shlex.split(text)
        label = " ".join(argv) or DEFAULT_LABEL
        taken = {existing for existing, _ in configs}
        if label in taken:
            label = f"{label} #{len(configs) + 1}"
        configs.append((label, argv))
    return configs


def model_versions(repository: Path, model_name: str) -> list[tuple[int, Path]]:
    """(version, model.onnx) for every numbered version, ascending."""
    model_dir = repository / model_name
    if not model_dir.is_dir():
        return []
    found = [
        (int(p.name), p / "model.onnx")
        for p in model_dir.iterdir()
        if p.name.isdigit() and (p / "model.onnx").is_file()
    ]
    return sorted(found)


def resolve_model(repository: Path, model_name: str) -> Path:
    """The model the server serves by default: the highest numbered version."""
    versions = model_versions(repository, model_name)
    if not versions:
        raise FileNotFoundError(
            f"no {model_name}/<version>/model.onnx under {repository}; run `make model` first"
        )
    return versions[-1][1]


def _lscpu_model() -> str:
    try:
        output = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        output = ""
    for line in output.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    import onnxruntime

    return {
        "cpu_model": _lscpu_model(),
        "cores": available_cores(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def run_ort_ceiling(model: Path, seconds: float, out: Path) -> dict[str, Any]:
    """The ONNX Runtime ceiling, in its own process (bounded by a timeout)."""
    command = python_module_command(
        "bench.ort_ceiling", "--model", str(model), "--seconds", str(seconds), "--json", str(out)
    )
    log(f"ONNX Runtime ceiling on {model} ({seconds:g} s per batch size)")
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds * len(DEFAULT_BATCH_SIZES) + ORT_TIMEOUT_MARGIN_S,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"ort_ceiling failed ({completed.returncode}): {completed.stderr}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def batch_totals(metrics_text: str) -> tuple[float, float] | None:
    """(images, batches) so far from the server's batch-size histogram, summed over its
    models and versions (a repository serves several; the bench loads one of them)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = None
    for family in text_string_to_metric_families(metrics_text):
        if family.name != BATCH_SIZE_METRIC:
            continue
        for sample in family.samples:
            if sample.name == f"{BATCH_SIZE_METRIC}_sum":
                total = (total or 0.0) + sample.value
            elif sample.name == f"{BATCH_SIZE_METRIC}_count":
                count = (count or 0.0) + sample.value
    if total is None or count is None:
        return None
    return total, count


def scrape_batch_totals(metrics_port: int | None) -> tuple[float, float] | None:
    """batch_totals() of the server's /metrics, if reachable."""
    if not metrics_port:
        return None
    try:
        text = h2load.scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    except OSError:
        return None
    return batch_totals(text)


class Runner:
    """Runs scenarios against one service, collecting results and failures."""

    def __init__(self, failures: list[str], notes: list[str]) -> None:
        self.failures = failures
        self.notes = notes

    def run(
        self,
        label: str,
        service: ServiceProcess,
        scenarios: Sequence[Scenario],
        metrics_port: int | None = None,
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        for scenario in scenarios:
            if self.exited(label, service, scenario.name):
                break
            result = self.run_one(label, service, scenario, metrics_port)
            if result is not None:
                results.append(result)
        return results

    def exited(self, label: str, service: ServiceProcess, before: str) -> bool:
        """Whether the service has exited (a failure, recorded) before scenario `before`."""
        if service.process is None or service.process.poll() is None:
            return False
        self.failures.append(
            f"{label}: service exited ({service.process.returncode}) "
            f"before {before}; log: {service.log_path}"
        )
        return True

    def run_one(
        self, label: str, service: ServiceProcess, scenario: Scenario, metrics_port: int | None
    ) -> dict[str, Any] | None:
        before = scrape_batch_totals(metrics_port)
        try:
            result = run_scenario(service.target, scenario, cpu_seconds=service.cpu_seconds)
        except LoadGenError as error:
            self.failures.append(f"{label} / {scenario.name}: {error}")
            log(f"{label} / {scenario.name}: FAILED: {error}")
            return None
        after = scrape_batch_totals(metrics_port)
        if before is not None and after is not None and after[1] > before[1]:
            result = result.with_mean_batch_size((after[0] - before[0]) / (after[1] - before[1]))
        if result.requests_ok == 0:
            self.failures.append(
                f"{label} / {scenario.name}: no successful requests (errors {result.errors})"
            )
        p99 = f"{result.latency.p99_ms:.2f}" if result.latency else "-"
        log(
            f"{label} / {scenario.name}: {result.requests_per_s:,.0f} req/s, "
            f"{result.images_per_s:,.0f} img/s, p99 {p99} ms, errors {result.errors or 0}"
        )
        return result.to_dict()

    def run_h2load(
        self,
        label: str,
        service: ServiceProcess,
        scenarios: Sequence[H2loadScenario],
        counter_for: Callable[[Api], CountReader],
        metrics_port: int | None = None,
    ) -> list[dict[str, Any]]:
        """h2load's rows against one service; a row whose calls were not all answered OK
        (by the service's own counters) is kept in the results and fails the run."""
        if shutil.which(h2load.H2LOAD) is None:
            self.failures.append(f"{label}: {h2load.INSTALL_HINT}")
            log(f"{label}: h2load rows SKIPPED: {h2load.INSTALL_HINT}")
            return []
        results: list[dict[str, Any]] = []
        for scenario in scenarios:
            if self.exited(label, service, scenario.name):
                break
            port = service.ready.get("grpc_port" if scenario.api.is_grpc else "http_port")
            try:
                if not port:
                    raise H2loadError(f"the service serves no {scenario.api} port: {service.ready}")
                row = h2load.measure(
                    scenario,
                    int(port),
                    counter=counter_for(scenario.api),
                    cpu_seconds=service.cpu_seconds,
                    extra=lambda: batch_sample(metrics_port),
                )
            except (H2loadError, OSError, grpc.RpcError) as error:
                self.failures.append(f"{label} / {scenario.name}: {error}")
                log(f"{label} / {scenario.name}: FAILED: {error}")
                continue
            deltas = row["window_deltas"]
            if deltas.get("batches", 0) > 0:
                row["mean_batch_size"] = deltas["images"] / deltas["batches"]
            problem = h2load.row_problem(row)
            if problem is not None:
                self.failures.append(f"{label} / {scenario.name}: {problem}")
            failed = f": FAILED: {problem}" if problem else ""
            log(f"{label} / {scenario.name}: {h2load.describe_row(row)}{failed}")
            results.append(row)
        return results


def batch_sample(metrics_port: int | None) -> Mapping[str, float] | None:
    """The server's batch totals so far, as {"images", "batches"} (None when unreachable)."""
    totals = scrape_batch_totals(metrics_port)
    return None if totals is None else {"images": totals[0], "batches": totals[1]}


def v2_stubs_available() -> bool:
    try:
        from mnist_serving_proto import open_inference_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def run_server_config(
    label: str,
    server_argv: Sequence[str],
    settings: BenchSettings,
    repository: Path,
    logs_dir: Path,
    runner: Runner,
    index: int,
) -> list[dict[str, Any]]:
    command = python_module_command(
        SERVER_MODULE,
        "--model-repository",
        str(repository),
        "--default-model",
        settings.model_name,
        *SERVER_BASE_ARGS,
        *server_argv,
    )
    if not tracing_on(server_argv):
        return _run_server(label, command, None, settings, logs_dir, runner, index)
    with DiscardingCollector() as sink:
        env = {**os.environ, **sink.exporter_environment()}
        results = _run_server(label, command, env, settings, logs_dir, runner, index)
    if results and not sink.exports:
        runner.failures.append(f"server [{label}]: traced, but exported no spans to the sink")
    runner.notes.append(f"server [{label}]: {sink.exports} OTLP exports to the bench's sink")
    return results


def _run_server(
    label: str,
    command: Sequence[str],
    env: dict[str, str] | None,
    settings: BenchSettings,
    logs_dir: Path,
    runner: Runner,
    index: int,
) -> list[dict[str, Any]]:
    service = ServiceProcess(
        command,
        log_path=logs_dir / f"server-{index}.log",
        ready_timeout_s=SERVER_READY_TIMEOUT_S,
        env=env,
    )
    log(f"server [{label}]: {shlex.join(command)}")
    with_v2 = v2_stubs_available()
    if not with_v2:
        runner.notes.append(
            "V2 scenario skipped: mnist_serving_proto.open_inference_pb2 is missing"
        )
    try:
        with service:
            metrics_port = service.ready.get("metrics_port")
            results = runner.run(
                label, service, plan.server_scenarios(settings, with_v2=with_v2), metrics_port
            )
            if metrics_port:
                results += runner.run_h2load(
                    label,
                    service,
                    plan.h2load_server_scenarios(settings, with_v2=with_v2),
                    lambda api: h2load.server_counter(int(metrics_port), api),
                    metrics_port,
                )
            else:
                runner.failures.append(f"server [{label}]: no /metrics port, no h2load rows")
            peak = next(
                (r["requests_per_s"] for r in results if r["name"] == plan.REFERENCE_UNARY), 0.0
            )
            results += runner.run(
                label, service, plan.open_loop_scenarios(settings, peak), metrics_port
            )
        if service.process is not None and service.process.returncode not in (0, None):
            runner.failures.append(
                f"server [{label}] exited with {service.process.returncode}"
                f" on SIGTERM; log: {service.log_path}"
            )
    except ServiceStartError as error:
        runner.failures.append(f"server [{label}]: {error}")
        log(f"server [{label}] failed to start: {error}")
        return []
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    configs = server_configs(args.server_args)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    results_dir: Path = args.results_dir
    logs_dir = results_dir / f"logs-{stamp}"
    logs_dir.mkdir(parents=True, exist_ok=True)
    try:
        model = resolve_model(args.model_repository, args.model_name)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    failures: list[str] = []
    notes: list[str] = []
    runner = Runner(failures, notes)
    document: dict[str, Any] = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])]),
        "settings": {**settings.__dict__, "model": str(model)},
        "ort_ceiling": None,
        "echo": [],
        "http_echo": [],
        "native_echo": [],
        "minimal_path": [],
        "servers": [],
        "ratios": [],
    }
    if not args.skip_ort:
        seconds = QUICK_ORT_SECONDS if args.quick else DEFAULT_SECONDS_PER_BATCH_SIZE
        try:
            ceilings = [
                run_ort_ceiling(path, seconds, logs_dir / f"ort-v{version}.json")
                for version, path in model_versions(args.model_repository, args.model_name)
            ]
            # The served (highest) version is the ceiling; the others are there to compare
            # (e.g. the INT8 version against the FP32 one).
            document["ort_ceiling"] = {**ceilings[-1], "other_versions": ceilings[:-1]}
        except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as error:
            failures.append(f"ONNX Runtime ceiling: {error}")
    if not args.skip_echo:
        echo = ServiceProcess(
            python_module_command("bench.echo_server", "--port", "0"),
            log_path=logs_dir / "echo.log",
        )
        try:
            with echo:
                document["echo"] = runner.run("echo", echo, plan.echo_scenarios(settings))
                document["echo"] += runner.run_h2load(
                    "echo",
                    echo,
                    plan.h2load_echo_scenarios(settings),
                    lambda api: h2load.grpc_echo_counter(echo.target),
                )
        except ServiceStartError as error:
            failures.append(f"echo server: {error}")
        native_echo = ServiceProcess(
            python_module_command("bench.native_echo", "--port", "0"),
            log_path=logs_dir / "native-echo.log",
        )
        try:
            with native_echo:
                document["native_echo"] = runner.run_h2load(
                    "native echo",
                    native_echo,
                    plan.h2load_echo_scenarios(settings),
                    lambda api: h2load.grpc_echo_counter(native_echo.target),
                )
        except ServiceStartError as error:
            failures.append(f"native echo: {error}")
        # The minimal full path: native front, V2 parse, one ONNX Runtime batch, replies.
        minimal_path = ServiceProcess(
            python_module_command("bench.minimal_path", "--port", "0"),
            log_path=logs_dir / "minimal-path.log",
        )
        try:
            with minimal_path:
                document["minimal_path"] = runner.run_h2load(
                    "minimal path",
                    minimal_path,
                    plan.h2load_echo_scenarios(settings),
                    lambda api: h2load.grpc_echo_counter(minimal_path.target),
                )
        except ServiceStartError as error:
            failures.append(f"minimal path: {error}")
        http_echo = ServiceProcess(
            python_module_command("bench.asgi_echo"), log_path=logs_dir / "asgi-echo.log"
        )
        try:
            with http_echo:
                document["http_echo"] = runner.run_h2load(
                    "ASGI echo",
                    http_echo,
                    plan.h2load_http_echo_scenarios(settings),
                    lambda api: h2load.http_echo_counter(int(http_echo.ready["http_port"])),
                )
        except ServiceStartError as error:
            failures.append(f"ASGI echo: {error}")
    for index, (label, server_argv) in enumerate(configs):
        document["servers"].append(
            {
                "label": label,
                "server_args": server_argv,
                "scenarios": run_server_config(
                    label, server_argv, settings, args.model_repository, logs_dir, runner, index
                ),
            }
        )
    ratios = compute_ratios(document)
    document["ratios"] = [ratio.to_dict() for ratio in ratios]
    document["failures"] = failures
    document["notes"] = notes
    problems = validate_results_document(document)
    if problems:
        failures.append(f"results document does not match its schema: {problems}")
    out = results_dir / f"bench-{stamp}.json"
    out.write_text(json.dumps(document, indent=2))
    (results_dir / "latest.json").write_text(json.dumps(document, indent=2))
    table = render_table(document, ratios)
    print(table)
    print()
    for line in render_ratio_lines(ratios):
        print(line)
    if not args.no_docs:
        plot_path = args.docs.parent / PLOT_NAME
        plotted = plot_latency_throughput(document, plot_path)
        write_docs(
            args.docs,
            render_docs_section(document, table, PLOT_NAME if plotted else None, ratios),
        )
        log(f"wrote {args.docs}" + (f" and {plot_path}" if plotted else ""))
    log(f"results: {out}; logs: {logs_dir}")
    for note in notes:
        log(f"note: {note}")
    for failure in failures:
        log(f"FAILURE: {failure}")
    return EXIT_FAILED if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
