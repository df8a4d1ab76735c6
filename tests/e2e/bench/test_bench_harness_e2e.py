"""The benchmark harness run as `make bench` runs it: real processes over loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.loadgen import run_scenario
from bench.processes import ServiceProcess, python_module_command
from bench.results import validate_results_document
from bench.scenarios import Kind, Mode, Scenario

REPO_ROOT = Path(__file__).resolve().parents[3]
SHORT_S = 1.0
WARMUP_S = 0.2
REQUEST_BUDGET = 40
BENCH_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log_path = tmp_path_factory.mktemp("echo") / "echo.log"
    service = ServiceProcess(python_module_command("bench.echo_server"), log_path=log_path)
    with service:
        yield service
    assert service.process is not None
    assert service.process.returncode == 0, service.log_tail()


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


def test_wrong_method_is_counted_by_status(echo_server: ServiceProcess) -> None:
    # The echo server has no V2 service: every call must come back UNIMPLEMENTED.
    result = run_scenario(echo_server.target, _scenario(Kind.V2_UNARY, concurrency=2))
    assert result.requests_ok == 0
    assert set(result.errors) == {"UNIMPLEMENTED"}
    assert result.latency is None


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
    assert "| default | unary c=64 |" in completed.stdout
    assert "| default | unary c=64 |" in docs.read_text()
    assert (tmp_path / "benchmarks_latency_throughput.png").is_file()
