"""The bench's OTLP/HTTP sink answers exports as a collector does and counts them."""

from __future__ import annotations

import urllib.request

from bench.otlp_sink import DiscardingCollector


def test_an_export_is_accepted_and_counted() -> None:
    with DiscardingCollector() as sink:
        environment = sink.exporter_environment()
        assert environment["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] == sink.endpoint
        assert environment["OTEL_TRACES_SAMPLER"] == "always_on"
        request = urllib.request.Request(
            sink.endpoint,
            data=b"\x0a\x00",
            headers={"Content-Type": "application/x-protobuf"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 200
        assert sink.exports == 1
