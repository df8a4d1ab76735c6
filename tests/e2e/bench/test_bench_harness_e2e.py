"""The benchmark harness run as `make bench` runs it: real processes over loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import h2load, plan
from bench.h2load import NOT_COUNTED
from bench.loadgen import run_scenario
from bench.processes import ServiceProcess, python_module_command
from bench.results import validate_results_document
from bench.run import SERVER_BASE_ARGS, SERVER_MODULE, Runner
from bench.scenarios import Api, H2loadScenario, Kind, Mode, Scenario

REPO_ROOT = Path(__file__).resolve().parents[3]
SHORT_S = 1.0
WARMUP_S = 0.2
REQUEST_BUDGET = 40
BENCH_TIMEOUT_S = 600
UNKNOWN_MODEL = "no-such-model"
QUICK = plan.BenchSettings(duration_s=0.5, warmup_s=WARMUP_S)


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log_path = tmp_path_factory.mktemp("echo") / "echo.log"
    service = ServiceProcess(python_module_command("bench.echo_server"), log_path=log_path)
    with service:
        yield service
    assert service.process is not None
    assert service.process.returncode == 0, service.log_tail()


@pytest.fixture(scope="module")
def asgi_echo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log_path = tmp_path_factory.mktemp("asgi-echo") / "echo.log"
    with ServiceProcess(python_module_command("bench.asgi_echo"), log_path=log_path) as service:
        yield service


@pytest.fixture(scope="module")
def server(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """The server as `make bench` starts it."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    command = python_module_command(
        SERVER_MODULE, "--model-repository", str(model_repository), *SERVER_BASE_ARGS
    )
    with ServiceProcess(command, log_path=log_path, ready_timeout_s=180) as service:
        yield service


def _scenario(kind: Kind, **fields: object) -> Scenario:
    return Scenario(
        name=str(kind),
        kind=kind,
        duration_s=SHORT_S,
        warmup_s=WARMUP_S,
        verify_replies=False,
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "scenario",
    [
        _scenario(Kind.CLASSIFY_UNARY, concurrency=4, client_processes=2),
        _scenario(Kind.CLASSIFY_UNARY, concurrency=2, images_per_request=64),
        _scenario(Kind.CLASSIFY_STREAM, concurrency=2, window=4, client_processes=2),
        _scenario(Kind.CLASSIFY_UNARY, mode=Mode.OPEN, rate=200.0, client_processes=2),
    ],
    ids=["unary", "64-image", "stream", "open-loop"],
)
def test_scenarios_against_the_echo_server(echo_server: ServiceProcess, scenario: Scenario) -> None:
    result = run_scenario(echo_server.target, scenario, cpu_seconds=echo_server.cpu_seconds)
    assert result.errors == {}
    assert result.requests_ok > 0
    assert result.latency is not None
    assert result.latency.count == result.requests_ok
    assert result.images_per_s == pytest.approx(result.requests_per_s * scenario.images_per_request)
    assert result.server_cpu_us_per_request is not None
    assert result.server_cpu_us_per_request > 0


def test_request_budget_bounds_a_scenario(echo_server: ServiceProcess) -> None:
    scenario = _scenario(
        Kind.CLASSIFY_UNARY, concurrency=4, client_processes=2, max_requests=REQUEST_BUDGET
    )
    result = run_scenario(echo_server.target, scenario)
    assert result.requests_sent == REQUEST_BUDGET


def test_the_echo_server_answers_the_v2_path(echo_server: ServiceProcess) -> None:
    result = run_scenario(echo_server.target, _scenario(Kind.V2_UNARY, concurrency=2))
    assert result.errors == {}
    assert result.requests_ok > 0


def test_errors_are_counted_by_status(server: ServiceProcess) -> None:
    scenario = _scenario(Kind.V2_UNARY, concurrency=2, model_name=UNKNOWN_MODEL)
    result = run_scenario(server.target, scenario)
    assert result.requests_ok == 0
    assert set(result.errors) == {"NOT_FOUND"}
    assert result.latency is None


def _echo_row(service: ServiceProcess, api: Api, counter: h2load.CountReader) -> dict[str, Any]:
    (scenario,) = (
        plan.h2load_echo_scenarios(QUICK) if api.is_grpc else plan.h2load_http_echo_scenarios(QUICK)
    )
    port = service.grpc_port if api.is_grpc else int(service.ready["http_port"])
    return h2load.measure(scenario, port, counter=counter, cpu_seconds=service.cpu_seconds)


def test_h2load_against_the_grpc_floor(echo_server: ServiceProcess) -> None:
    row = _echo_row(echo_server, Api.GRPC_V2, h2load.grpc_echo_counter(echo_server.target))
    assert h2load.row_problem(row) is None
    assert row["errors"] == {}
    sent = row["requests_sent"]
    assert sent >= h2load.MIN_ROUNDS * 64
    assert row["requests_ok"] == sent
    assert row["latency_ms"]["count"] == sent
    assert row["server_cpu_us_per_request"] > 0


def test_h2load_against_the_http_floor(asgi_echo: ServiceProcess) -> None:
    counter = h2load.http_echo_counter(int(asgi_echo.ready["http_port"]))
    row = _echo_row(asgi_echo, Api.HTTP_BINARY_V2, counter)
    assert h2load.row_problem(row) is None
    assert row["requests_ok"] == row["requests_sent"]
    assert row["h2load"]["status_codes"]["2xx"] == row["requests_sent"]


def test_h2load_rows_against_the_server(server: ServiceProcess) -> None:
    failures: list[str] = []
    metrics_port = int(server.ready["metrics_port"])
    rows = Runner(failures, []).run_h2load(
        "server",
        server,
        plan.h2load_server_scenarios(QUICK),
        lambda api: h2load.server_counter(metrics_port, api),
        metrics_port,
    )
    assert failures == []
    assert [row["name"] for row in rows] == [
        plan.H2LOAD_V2_NAME,
        plan.H2LOAD_CLASSIFY_NAME,
        plan.H2LOAD_HTTP_NAME,
    ]
    for row in rows:
        assert row["errors"] == {}
        assert row["requests_ok"] == row["requests_sent"] > 0
        assert row["mean_batch_size"] >= 1.0
        assert row["server_cpu_us_per_request"] > 0
        latency = row["latency_ms"]
        assert 0 < latency["p50_ms"] <= latency["p95_ms"] <= latency["p99_ms"] <= latency["max_ms"]


def test_h2load_sees_http_200_where_the_server_counts_errors(server: ServiceProcess) -> None:
    # Every call names a model the server lacks: NOT_FOUND, in the trailers of an HTTP 200.
    scenario = H2loadScenario(
        name="unknown model", api=Api.GRPC_V2, connections=2, streams=4, duration_s=0.3,
        warmup_s=WARMUP_S, model_name=UNKNOWN_MODEL,
    )  # fmt: skip
    counter = h2load.server_counter(int(server.ready["metrics_port"]), Api.GRPC_V2)
    row = h2load.measure(
        scenario, server.grpc_port, counter=counter, cpu_seconds=server.cpu_seconds
    )
    sent = row["requests_sent"]
    assert row["h2load"]["status_codes"]["2xx"] == sent
    assert row["h2load"]["requests"]["succeeded"] == sent
    assert row["requests_ok"] == 0
    assert row["errors"] == {"NOT_FOUND": sent}
    assert NOT_COUNTED not in row["errors"]
    assert f"{sent} of {sent} calls not answered OK" in str(h2load.row_problem(row))


def test_make_bench_quick_end_to_end(model_repository: Path, tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--duration",
            "0.5",
            "--warmup",
            "0.2",
            "--model-repository",
            str(model_repository),
            "--results-dir",
            str(tmp_path / "results"),
            "--docs",
            str(docs),
            "--server-args=",
            # Traced: exports to the bench's own OTLP sink (a run that exports nothing fails).
            "--server-args=--tracing on",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    document = json.loads((tmp_path / "results" / "latest.json").read_text())
    assert validate_results_document(document) == []
    assert document["failures"] == []
    assert document["ort_ceiling"]["images_per_s"]["64"] > 0
    scenarios = {s["name"]: s for s in document["servers"][0]["scenarios"]}
    assert scenarios["unary c=64"]["requests_ok"] > 0
    assert scenarios["unary c=64"]["errors"] == {}
    for name in (plan.H2LOAD_V2_NAME, plan.H2LOAD_CLASSIFY_NAME, plan.H2LOAD_HTTP_NAME):
        assert scenarios[name]["errors"] == {}
        assert scenarios[name]["requests_ok"] == scenarios[name]["requests_sent"] > 0
    assert [s["name"] for s in document["echo"]][-1] == plan.H2LOAD_V2_NAME
    assert [s["name"] for s in document["http_echo"]] == [plan.H2LOAD_HTTP_NAME]
    assert [s["name"] for s in document["native_echo"]] == [plan.H2LOAD_V2_NAME]
    assert document["native_echo"][0]["requests_ok"] > 0
    ratios = {(r["config"], r["name"]): r for r in document["ratios"]}
    assert ratios[("default", "HTTP binary CPU/req / ASGI echo's")]["value"] > 0
    assert ratios[("default", f"CPU/req / echo floor's ({plan.H2LOAD_V2_NAME})")]["value"] > 0
    native_floor = f"CPU/req / native echo floor's ({plan.H2LOAD_V2_NAME})"
    assert ratios[("default", native_floor)]["value"] > 0
    traced = ratios[("--tracing on", f"CPU/req ({plan.H2LOAD_V2_NAME}) / the defaults'")]
    assert traced["value"] > 0
    assert any("OTLP exports to the bench's sink" in note for note in document["notes"])
    assert "| default | unary c=64 |" in completed.stdout
    assert f"| default | {plan.H2LOAD_V2_NAME} |" in completed.stdout
    assert "| default | unary c=64 |" in docs.read_text()
    assert (tmp_path / "benchmarks_latency_throughput.png").is_file()
