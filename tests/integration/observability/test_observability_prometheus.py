"""A real Prometheus scrapes a real server: counts, latency quantiles, rules and dashboard.

The expressions are the ones we ship (deploy/prometheus rules, deploy/grafana dashboard), so
a metric or label renamed in the server without them following fails here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.observability.observed_server import (
    OBSERVED_SERVER_ARGS,
    observed_repository,
    send_classify_calls,
    wait_for_model_quality_series,
)
from tests.integration.observability.prometheus_process import (
    JOB_NAME,
    PROMETHEUS_BINARY,
    Prometheus,
    run_prometheus,
)
from tests.requirements_support import require_tool
from tests.support.server_process import ServerProcess, start_server_process
from tests.support.waiting import wait_for
from tests.unit.deploy.metric_contract import (
    RULES_FILE,
    alert_rules,
    dashboard_expressions,
    substitute_grafana_variables,
)

WARM_UP_CALLS = 1
MEASURED_CALLS = 40
TOTAL_CALLS = WARM_UP_CALLS + MEASURED_CALLS
# Several scrape intervals on a loaded two-core machine.
SCRAPE_WAIT_S = 60.0
# One 28x28 image on loopback: far below this even on a busy machine; a bound, not a timing.
LATENCY_BOUND_S = 10.0
OK_COUNT = f'sum(mnist_serving_requests_total{{job="{JOB_NAME}",method="Classify",code="OK"}})'
P99_CUMULATIVE = (
    "histogram_quantile(0.99, sum by (le) "
    f'(mnist_serving_request_duration_seconds_bucket{{job="{JOB_NAME}",method="Classify"}}))'
)
P99_RATE = (
    "histogram_quantile(0.99, sum by (le) "
    f'(rate(mnist_serving_request_duration_seconds_bucket{{job="{JOB_NAME}",method="Classify"}}[5m])))'
)
# Dashboard series that stay empty while nothing fails or is rejected.
EMPTY_WITHOUT_ERRORS = ("mnist_serving_rejections_total", 'code=~"INTERNAL')


@pytest.fixture(scope="module", autouse=True)
def prometheus_installed() -> None:
    """Before `observed` starts a server for nothing: autouse fixtures of a scope go first."""
    require_tool(PROMETHEUS_BINARY, "Debian's prometheus (make system-deps installs it)")


@dataclass(frozen=True)
class Observed:
    server: ServerProcess
    prometheus: Prometheus


@pytest.fixture(scope="module")
def observed(
    model_repository: Path,
    sample_digits: tuple[Any, Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Observed]:
    """A server with known traffic, scraped by Prometheus that also evaluates our rules."""
    images, _labels = sample_digits
    repository = observed_repository(model_repository, tmp_path_factory.mktemp("observed") / "r")
    with start_server_process(repository, *OBSERVED_SERVER_ARGS) as server:
        assert server.metrics_port is not None
        with run_prometheus(server.metrics_port, [RULES_FILE]) as prometheus:
            wait_for(
                lambda: prometheus.scalar(f'up{{job="{JOB_NAME}"}}') or None,
                SCRAPE_WAIT_S,
                "the first successful scrape",
            )
            # The warm-up call creates the Classify series, and a scrape records it before
            # the measured calls, so rate() over the window sees them as an increase.
            send_classify_calls(server.target, images, WARM_UP_CALLS)
            wait_for(lambda: prometheus.scalar(OK_COUNT), SCRAPE_WAIT_S, "the warm-up call")
            send_classify_calls(server.target, images, MEASURED_CALLS)
            wait_for_model_quality_series(server.metrics_port)
            wait_for(
                lambda: prometheus.scalar(OK_COUNT) == TOTAL_CALLS or None,
                SCRAPE_WAIT_S,
                f"{TOTAL_CALLS} Classify calls in Prometheus",
            )
            yield Observed(server, prometheus)
        assert server.stop() == 0


def test_prometheus_counts_every_classify_call(observed: Observed) -> None:
    assert observed.prometheus.scalar(OK_COUNT) == TOTAL_CALLS


@pytest.mark.parametrize("promql", [P99_CUMULATIVE, P99_RATE], ids=["cumulative", "rate"])
def test_p99_latency_from_the_histogram_buckets_is_plausible(
    observed: Observed, promql: str
) -> None:
    p99 = observed.prometheus.scalar(promql)
    assert p99 is not None
    assert math.isfinite(p99)
    assert 0 < p99 < LATENCY_BOUND_S


def test_every_shipped_alert_rule_loads_and_evaluates_healthy(observed: Observed) -> None:
    def evaluated_rules() -> list[dict[str, Any]] | None:
        groups = observed.prometheus.get("/api/v1/rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        all_evaluated = rules and all(rule.get("health") != "unknown" for rule in rules)
        return rules if all_evaluated else None

    rules = wait_for(evaluated_rules, SCRAPE_WAIT_S, "every rule to be evaluated")
    problems = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert problems == []
    # Every rule of the file, no more, no less (alerting rules by alert, recording by record).
    shipped = alert_rules(yaml.safe_load(RULES_FILE.read_text(encoding="utf-8")))
    expected = sorted(rule.get("alert") or rule["record"] for rule in shipped)
    assert sorted(rule["name"] for rule in rules) == expected


def test_no_alert_fires_while_the_server_is_healthy(observed: Observed) -> None:
    alerts = observed.prometheus.get("/api/v1/alerts")["alerts"]
    firing = [alert["labels"]["alertname"] for alert in alerts if alert["state"] == "firing"]
    assert firing == []


@pytest.mark.parametrize("expr", dashboard_expressions())
def test_dashboard_expression_evaluates_to_data(observed: Observed, expr: str) -> None:
    result = observed.prometheus.query(substitute_grafana_variables(expr))
    if not any(marker in expr for marker in EMPTY_WITHOUT_ERRORS):
        assert result, f"no data for {expr}"
