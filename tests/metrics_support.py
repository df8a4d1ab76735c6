"""Reading a server's in-process metrics in tests, whatever other labels a sample carries."""

from __future__ import annotations

from prometheus_client import CollectorRegistry


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
