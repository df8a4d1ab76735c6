"""The metric contract, read from docs/architecture.md, and the PromQL that uses it.

Shared by tests/unit/deploy (rules and dashboard against the documented names) and
tests/integration/observability (the same against a real /metrics scrape and a real
Prometheus). The PromQL reading is deliberately small: it finds metric selectors, their
label matchers and `by`/`without` label lists, which is all our own expressions use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

REPO_ROOT = Path(__file__).resolve().parents[3]
ARCHITECTURE_DOC = REPO_ROOT / "docs" / "architecture.md"
RULES_FILE = REPO_ROOT / "deploy" / "prometheus" / "rules" / "mnist-serving-alerts.yml"
DASHBOARD_FILE = REPO_ROOT / "deploy" / "grafana" / "mnist-serving-dashboard.json"
METRIC_PREFIX = "mnist_serving_"
# Labels Prometheus attaches to every scraped series (static config or Kubernetes discovery).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint"})
HISTOGRAM_BUCKET_LABEL = "le"
# Series the rules use that are not ours, with the labels we rely on.
EXTERNAL_METRICS: dict[str, frozenset[str]] = {
    "up": frozenset(),
    "kube_deployment_status_replicas_available": frozenset({"deployment"}),
}
# Grafana template variables, replaced by what a test run has, so expressions can be evaluated.
GRAFANA_SUBSTITUTIONS = {"$__rate_interval": "1m", "$job": "mnist-serving"}
GRPC_STATUS_NAMES = frozenset(code.name for code in grpc.StatusCode)

# `name{matchers}`, or a bare name of ours (a bare `up` is indistinguishable from a word).
_SELECTOR = re.compile(
    r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}|\b(mnist_serving_[a-zA-Z0-9_]+)"
)
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_BACKTICKED = re.compile(r"`([^`]+)`")
_PARENTHESISED = re.compile(r"\([^)]*\)")


@dataclass(frozen=True)
class MetricSpec:
    """One row of the metrics table: name (as exposed), type and label names."""

    name: str
    type: str
    labels: frozenset[str]

    def sample_names(self) -> frozenset[str]:
        """Names of the series Prometheus stores for this metric."""
        if self.type == "histogram":
            return frozenset(self.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        return frozenset({self.name})


@dataclass(frozen=True)
class MetricContract:
    metrics: dict[str, MetricSpec]
    label_values: dict[str, frozenset[str]]
    """Documented value sets of bounded labels (`method`, `reason`; `code` = gRPC names)."""

    def metric_of_sample(self, sample_name: str) -> MetricSpec | None:
        for spec in self.metrics.values():
            if sample_name in spec.sample_names():
                return spec
        return None

    def all_sample_names(self) -> frozenset[str]:
        return frozenset().union(*(spec.sample_names() for spec in self.metrics.values()))


def read_contract(doc: Path = ARCHITECTURE_DOC) -> MetricContract:
    """Parse the `## Metrics` section of docs/architecture.md."""
    section = doc.read_text(encoding="utf-8").split("## Metrics", 1)[1].split("\n## ", 1)[0]
    metrics: dict[str, MetricSpec] = {}
    label_values: dict[str, frozenset[str]] = {"code": GRPC_STATUS_NAMES}
    lines = section.splitlines()
    for index, line in enumerate(lines):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith(f"`{METRIC_PREFIX}"):
            name = cells[0].strip("`")
            labels_cell = _PARENTHESISED.sub("", cells[2])
            if ":" in labels_cell:  # "`reason`: `queue_full`, `deadline`, ..."
                label, values = labels_cell.split(":", 1)
                labels = frozenset(_BACKTICKED.findall(label))
                label_values[next(iter(labels))] = frozenset(_BACKTICKED.findall(values))
            else:
                labels = frozenset(_BACKTICKED.findall(labels_cell))
            metrics[name] = MetricSpec(name, cells[1].split()[0], labels)
        elif line.startswith("`method` values:"):
            paragraph = " ".join(lines[index : index + _paragraph_length(lines, index)])
            label_values["method"] = frozenset(_BACKTICKED.findall(paragraph.split(":", 1)[1]))
    return MetricContract(metrics, label_values)


def _paragraph_length(lines: list[str], start: int) -> int:
    """How many lines, from `start` on, belong to the paragraph that begins there."""
    length = 1
    while start + length < len(lines) and lines[start + length].strip():
        length += 1
    return length


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]
    """(label, operator, value) for each matcher inside the braces."""


def selectors(expr: str) -> list[Selector]:
    """Metric selectors in a PromQL expression: `name{...}` and bare `mnist_serving_*` names."""
    found: list[Selector] = []
    for match in _SELECTOR.finditer(expr):
        name = match.group(1) or match.group(3)
        matchers = tuple(_MATCHER.findall(match.group(2) or ""))
        found.append(Selector(name, matchers))
    return found


def grouping_labels(expr: str) -> set[str]:
    """Label names inside every `by (...)` and `without (...)` clause."""
    return {
        label.strip()
        for group in _GROUPING.findall(expr)
        for label in group.split(",")
        if label.strip()
    }


def regex_alternatives(value: str) -> set[str]:
    """`A|B|C` -> {A, B, C}: our regex matchers are plain alternations of label values."""
    return set(value.split("|"))


def alert_rules(rules_document: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules_document["groups"] for rule in group["rules"]]


def dashboard_expressions(dashboard_file: Path = DASHBOARD_FILE) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and template variable queries."""
    dashboard = json.loads(dashboard_file.read_text(encoding="utf-8"))
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            expressions.append(query["query"])
    return expressions


def label_values_query_to_promql(expr: str) -> str:
    """Grafana's `label_values(metric, label)` -> the metric itself, for evaluation."""
    match = re.fullmatch(r"label_values\(\s*([^,]+?)\s*,\s*[a-zA-Z_]+\s*\)", expr.strip())
    return match.group(1) if match else expr


def substitute_grafana_variables(expr: str) -> str:
    for variable, value in GRAFANA_SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    return label_values_query_to_promql(expr)


def contract_violations(expr: str, contract: MetricContract) -> list[str]:
    """Everything in `expr` that the documented metrics do not have (empty when all is well)."""
    problems: list[str] = []
    used = selectors(expr)
    if not used:
        problems.append("no metric selector found")
    known_labels: set[str] = set(TARGET_LABELS)
    for selector in used:
        if selector.metric in EXTERNAL_METRICS:
            allowed = set(EXTERNAL_METRICS[selector.metric])
        else:
            spec = contract.metric_of_sample(selector.metric)
            if spec is None:
                problems.append(f"unknown metric {selector.metric}")
                continue
            allowed = set(spec.labels)
            if selector.metric.endswith("_bucket"):
                allowed.add(HISTOGRAM_BUCKET_LABEL)
        known_labels |= allowed
        for label, operator, value in selector.matchers:
            if label not in allowed | TARGET_LABELS:
                problems.append(f"{selector.metric} has no label {label!r}")
            documented = contract.label_values.get(label)
            if documented is None or selector.metric in EXTERNAL_METRICS:
                continue
            values = regex_alternatives(value) if "~" in operator else {value}
            for unknown in sorted(values - documented):
                problems.append(f"{selector.metric}: {label} value {unknown!r} is not documented")
    for label in sorted(grouping_labels(expr) - known_labels):
        problems.append(f"grouping by {label!r}, which none of the metrics has")
    return problems
