"""A real server's /metrics and health service, against the docs, rules and dashboard."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.observability.observed_server import (
    OBSERVED_SERVER_ARGS,
    exposed_name,
    observed_repository,
    send_classify_calls,
    wait_for_model_quality_series,
)
from tests.support.metrics import scrape_families
from tests.support.server_process import ServerProcess, start_server_process
from tests.unit.deploy.metric_contract import (
    METRIC_PREFIX,
    dashboard_expressions,
    read_contract,
    selectors,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
HEALTH_CHECK_SCRIPT = REPO_ROOT / "deploy" / "docker" / "grpc_health_check.py"
HEALTH_CHECK_TIMEOUT_S = 30
WARM_UP_CALLS = 3
# Labels a histogram's or counter's extra series carry besides the metric's own.
SERIES_LABELS = {"le"}
# prometheus_client also exposes a `<name>_created` timestamp per counter and histogram,
# which the text parser reads as a family of its own: not part of the contract.
CREATED_SUFFIX = "_created"


@pytest.fixture(scope="module")
def server_process(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    repository = observed_repository(model_repository, tmp_path_factory.mktemp("observed") / "r")
    with start_server_process(repository, *OBSERVED_SERVER_ARGS) as process:
        yield process
        assert process.stop() == 0


@pytest.fixture(scope="module")
def served_some_calls(server_process: ServerProcess, sample_digits: tuple[Any, Any]) -> None:
    images, _labels = sample_digits
    send_classify_calls(server_process.target, images, WARM_UP_CALLS)
    wait_for_model_quality_series(server_process.metrics_port)


def run_health_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTH_CHECK_SCRIPT), "--timeout-s", "5", *args],
        capture_output=True,
        text=True,
        timeout=HEALTH_CHECK_TIMEOUT_S,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize("service", ["mnist_serving.v1.Classifier", ""])
def test_container_health_check_passes_on_a_serving_server(
    server_process: ServerProcess, service: str
) -> None:
    result = run_health_check("--target", server_process.target, "--service", service)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SERVING" in result.stdout


def test_container_health_check_fails_for_an_unknown_service(
    server_process: ServerProcess,
) -> None:
    result = run_health_check("--target", server_process.target, "--service", "no.such.Service")
    assert result.returncode == 1
    assert "NOT_FOUND" in result.stdout


def test_container_health_check_fails_when_nothing_listens() -> None:
    result = run_health_check("--target", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stdout


@pytest.mark.usefixtures("served_some_calls")
def test_scraped_metrics_are_exactly_the_documented_ones(server_process: ServerProcess) -> None:
    assert server_process.metrics_port is not None
    contract = read_contract()
    families = {
        exposed_name(family): family
        for family in scrape_families(server_process.metrics_port)
        if family.name.startswith(METRIC_PREFIX) and not family.name.endswith(CREATED_SUFFIX)
    }
    assert set(families) == set(contract.metrics)
    for name, spec in contract.metrics.items():
        family = families[name]
        assert family.type == spec.type, name
        for sample in family.samples:
            assert set(sample.labels) - SERIES_LABELS == spec.labels, (name, sample)


@pytest.mark.usefixtures("served_some_calls")
def test_request_counter_carries_documented_label_values(server_process: ServerProcess) -> None:
    assert server_process.metrics_port is not None
    (requests,) = [
        family
        for family in scrape_families(server_process.metrics_port)
        if exposed_name(family) == "mnist_serving_requests_total"
    ]
    totals = {
        (sample.labels["method"], sample.labels["code"]): sample.value
        for sample in requests.samples
        if sample.name.endswith("_total")
    }
    assert totals[("Classify", "OK")] == WARM_UP_CALLS


@pytest.mark.usefixtures("served_some_calls")
def test_every_series_the_dashboard_reads_is_exposed(server_process: ServerProcess) -> None:
    assert server_process.metrics_port is not None
    exposed: set[str] = set()
    for family in scrape_families(server_process.metrics_port):
        exposed.add(exposed_name(family))
        exposed.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            exposed.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    used = {
        selector.metric
        for expr in dashboard_expressions()
        for selector in selectors(expr)
        if selector.metric.startswith(METRIC_PREFIX)
    }
    assert used - exposed == set()
