"""Reading a server's metrics in tests: its in-process registry or a scrape of /metrics."""

from __future__ import annotations

import urllib.request
from collections.abc import Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 10.0

# One sample of a scrape: its name and its labels, sorted.
SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class HasRegistry(Protocol):
    @property
    def registry(self) -> CollectorRegistry: ...


def sample_sum(
    registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None
) -> float:
    """The sum of every sample called `name` whose labels include `labels` (0 when none).

    Requests are labelled with protocol, method, model, version and code, batch metrics with
    model and version: a test names the labels it cares about and sums over the rest.
    """
    wanted = (labels or {}).items()
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and wanted <= sample.labels.items()
    )


def app_metric(app: HasRegistry, name: str, **labels: str) -> float:
    """`sample_sum` of an in-process app's registry, labels as keywords."""
    return sample_sum(app.registry, name, labels)


def metrics_text(port: int | None, host: str = "127.0.0.1") -> str:
    """The text of http://host:port/metrics."""
    assert port is not None, "the server has no metrics port"
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
        return str(response.read().decode("utf-8"))


def scrape_families(port: int | None) -> list[Metric]:
    """The server's /metrics, parsed into metric families."""
    return list(text_string_to_metric_families(metrics_text(port)))


def scrape(port: int | None) -> dict[SampleKey, float]:
    """Every sample of the server's /metrics, keyed by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in scrape_families(port)
        for sample in family.samples
    }


def total(samples: Mapping[SampleKey, float], name: str, **labels: str) -> float:
    """The sum of `name` over every scraped label set that includes `labels` (0 when none)."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and labels.items() <= dict(sample_labels).items()
    )
