"""A tracer that keeps its spans in memory, installed as the core's for one test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from mnist_serving_server.core import tracing


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test (every span sampled); what it exports, at once."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider.get_tracer("tests"))
    yield exporter
    tracing.install(None)
    provider.shutdown()


@pytest.fixture(autouse=True)
def _tracing_off_after_each_test() -> Iterator[None]:
    yield
    tracing.install(None)
