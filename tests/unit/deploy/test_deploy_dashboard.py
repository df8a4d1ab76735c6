"""The Grafana dashboard uses only documented metric names, labels and label values."""

from __future__ import annotations

import json

import pytest

from tests.unit.deploy.metric_contract import (
    DASHBOARD_FILE,
    contract_violations,
    dashboard_expressions,
    read_contract,
    selectors,
)

EXPECTED_METRIC_COUNT = 17


def test_contract_is_read_from_the_architecture_doc() -> None:
    contract = read_contract()
    assert len(contract.metrics) == EXPECTED_METRIC_COUNT
    assert contract.metrics["mnist_serving_requests_total"].labels == {
        "protocol",
        "method",
        "model",
        "version",
        "code",
    }
    assert contract.metrics["mnist_serving_request_duration_seconds"].type == "histogram"
    assert "queue_full" in contract.label_values["reason"]
    assert {"Classify", "ModelInfer", "ServerMetadata"} <= contract.label_values["method"]


@pytest.mark.parametrize("expr", dashboard_expressions())
def test_dashboard_expression_follows_the_contract(expr: str) -> None:
    assert contract_violations(expr, read_contract()) == []


def test_dashboard_shows_every_documented_metric() -> None:
    used = {selector.metric for expr in dashboard_expressions() for selector in selectors(expr)}
    contract = read_contract()
    missing = [spec.name for spec in contract.metrics.values() if not spec.sample_names() & used]
    assert missing == []


def test_dashboard_panels_have_unique_ids_and_a_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["type"] == "prometheus"


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(mnist_serving_request_total[5m])", "unknown metric mnist_serving_request_total"),
        ('mnist_serving_requests_total{rpc="Classify"}', "has no label 'rpc'"),
        ('mnist_serving_requests_total{method="Clasify"}', "value 'Clasify'"),
        ('mnist_serving_requests_total{code=~"OK|INTERNL"}', "value 'INTERNL'"),
        ("sum by (pod_name) (rate(mnist_serving_requests_total[1m]))", "grouping by 'pod_name'"),
        ('mnist_serving_queue_depth{le="1"}', "has no label 'le'"),
        ("vector(1)", "no metric selector found"),
    ],
)
def test_checker_catches_names_and_labels_that_drifted(expr: str, problem: str) -> None:
    problems = contract_violations(expr, read_contract())
    assert any(problem in found for found in problems), problems
