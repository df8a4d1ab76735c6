"""The caller's trace context on every call, when opentelemetry-api is installed.

Optional (`pip install "mnist-serving-client[tracing]"`): with OpenTelemetry's API importable
and a span current in the caller's code, each call carries that span's context as gRPC
metadata (`traceparent`, `tracestate` and whatever else the configured propagators write,
W3C by default), so the server's spans join the caller's trace. Without the package, or
with no span current, calls carry nothing more: the SDK itself needs only grpcio,
protobuf and numpy.
"""

from __future__ import annotations

try:
    from opentelemetry import propagate, trace

    TRACING_AVAILABLE = True
except ImportError:  # the SDK works without it: calls then carry no trace context
    TRACING_AVAILABLE = False

NO_METADATA: tuple[tuple[str, str], ...] = ()


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current span's context as gRPC metadata; () when there is none to send."""
    if not TRACING_AVAILABLE or not trace.get_current_span().get_span_context().is_valid:
        return NO_METADATA
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
