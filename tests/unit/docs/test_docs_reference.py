"""docs/reference.md is what docs/generate_reference.py writes from today's code, and holds
every flag of `mnist-serving --help`, every metric a live registry exposes and every error
kind: adding one without `make docs` fails here.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import mnist_serving_server
from docs import generate_reference
from mnist_serving_server.config import ServerConfig, build_parser
from mnist_serving_server.core.errors import ServingError
from mnist_serving_server.metrics import ServerMetrics
from tests.conftest import REPO_ROOT
from tests.unit.deploy.metric_contract import read_contract

REFERENCE = REPO_ROOT / "docs" / "reference.md"
STALE = "docs/reference.md is stale: run `make docs` and commit it"


def table_keys(section: str) -> set[str]:
    """The first column's names (backticks stripped) of the table under `## section`."""
    text = REFERENCE.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return {
        match.group(1) for line in body.splitlines() if (match := re.match(r"\| `([^`]+)`", line))
    }


def test_reference_is_what_the_code_declares() -> None:
    assert REFERENCE.read_text(encoding="utf-8") == generate_reference.render(), STALE


def test_every_flag_of_help_is_documented() -> None:
    options = {
        option
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    assert len(options) == len(ServerConfig.model_fields)
    assert options - table_keys("Flags") == set(), STALE


def exposed_names(registry: CollectorRegistry) -> set[str]:
    return {
        family.name + ("_total" if family.type == "counter" else "")
        for family in registry.collect()
    }


def test_every_metric_of_a_live_server_registry_is_documented(tmp_path: Path) -> None:
    from mnist_serving_server.workers import _Workers

    registry = CollectorRegistry()
    ServerMetrics(registry)
    _Workers(ServerConfig(workers=2), tmp_path, 0, 0, registry)
    names = exposed_names(registry)
    assert "mnist_serving_requests_total" in names
    assert "mnist_serving_worker_restarts_total" in names
    assert names - table_keys("Metrics") == set(), STALE


def test_the_metric_contract_matches_the_declarations() -> None:
    """Each row of docs/architecture.md's metrics table (what the alert rules and the
    dashboard are checked against) is a declared metric, with its type and labels."""
    declared = {metric.name: metric for metric in generate_reference.metrics()}
    for name, spec in read_contract().metrics.items():
        assert name in declared, f"docs/architecture.md: {name} is declared nowhere"
        assert spec.type == declared[name].kind, name
        assert spec.labels == frozenset(declared[name].labels), name


def all_server_modules() -> None:
    for module in pkgutil.walk_packages(
        mnist_serving_server.__path__, mnist_serving_server.__name__ + "."
    ):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)


def test_every_error_kind_is_documented() -> None:
    all_server_modules()
    kinds: set[str] = set()
    pending = [ServingError]
    while pending:
        for sub in pending.pop().__subclasses__():
            kinds.add(sub.__name__)
            pending.append(sub)
    assert {"InvalidInputError", "FailedPreconditionError", "ClientClosedError"} <= kinds
    assert kinds - table_keys("Errors") == set(), STALE


def test_a_metric_declared_in_a_new_module_is_read(tmp_path: Path) -> None:
    source = tmp_path / "new_module.py"
    source.write_text(
        "from prometheus_client import Counter, Histogram\n"
        'PREFIX = "mnist_serving"\n'
        "def declare(registry):\n"
        '    labels = ["model", "outcome"]\n'
        '    Counter(f"{PREFIX}_things", "Things " "counted.", labels, registry=registry)\n'
        '    Histogram("mnist_serving_thing_seconds", documentation="Time.", registry=registry)\n'
    )
    found = generate_reference.metrics_in(source)
    assert [(m.name, m.kind, m.labels, m.meaning) for m in found] == [
        ("mnist_serving_things_total", "counter", ("model", "outcome"), "Things counted."),
        ("mnist_serving_thing_seconds", "histogram", (), "Time."),
    ]


def test_a_metric_it_cannot_read_is_an_error_naming_its_line(tmp_path: Path) -> None:
    source = tmp_path / "computed.py"
    source.write_text(
        "from prometheus_client import Gauge\n"
        "def declare(name):\n"
        '    return Gauge(name, "Computed at run time.")\n'
    )
    with pytest.raises(generate_reference.DeclarationError, match=r"computed\.py:3:"):
        generate_reference.metrics_in(source)
