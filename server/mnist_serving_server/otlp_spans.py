"""OTLP trace export with the request body written straight to protobuf bytes.

The SDK's OTLP/HTTP exporter encodes a batch of spans by building a protobuf object for
every span, attribute, link and value, and by hashing each span's resource (as JSON) to
group the spans; on this server that cost more CPU than the spans themselves
(docs/performance.md). `SpanEncoder` writes the same `ExportTraceServiceRequest`
(opentelemetry-proto's `collector/trace/v1`; the message a collector decodes is equal to
the SDK's, tests/unit/tracing/test_otlp_spans.py) field by field, with the resource and
instrumentation scope encoded once and kept. `OtlpHttpSpanExporter` is the SDK's
exporter, with everything it reads from the OTEL_* variables (endpoint, headers,
certificates, compression, timeout, retries), sending that body.

Anything this writer does not spell itself (span events, attribute values that are lists)
goes through the SDK's own encoder for that one part, so every span is exported whole.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
    _encode_value,
)
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import _encode_events
from opentelemetry.exporter.otlp.proto.http._common import _is_request_too_large
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext

from mnist_serving_server import protobuf_wire as wire

logger = logging.getLogger(__name__)

# ExportTraceServiceRequest.resource_spans; ResourceSpans.resource, .scope_spans, .schema_url;
# ScopeSpans.scope, .spans, .schema_url (the same numbers in both messages).
_RESOURCE_SPANS: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_GROUP_HEAD: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_GROUP_ITEMS: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_SCHEMA_URL: Final = wire.tag(3, wire.LENGTH_DELIMITED)
# Span
_TRACE_ID: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_SPAN_ID: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_TRACE_STATE: Final = wire.tag(3, wire.LENGTH_DELIMITED)
_PARENT_SPAN_ID: Final = wire.tag(4, wire.LENGTH_DELIMITED)
_NAME: Final = wire.tag(5, wire.LENGTH_DELIMITED)
_KIND: Final = wire.tag(6, wire.VARINT)
_START: Final = wire.tag(7, wire.FIXED64)
_END: Final = wire.tag(8, wire.FIXED64)
_ATTRIBUTE: Final = wire.tag(9, wire.LENGTH_DELIMITED)
_DROPPED_ATTRIBUTES: Final = wire.tag(10, wire.VARINT)
_EVENT: Final = wire.tag(11, wire.LENGTH_DELIMITED)
_DROPPED_EVENTS: Final = wire.tag(12, wire.VARINT)
_LINK: Final = wire.tag(13, wire.LENGTH_DELIMITED)
_DROPPED_LINKS: Final = wire.tag(14, wire.VARINT)
_STATUS: Final = wire.tag(15, wire.LENGTH_DELIMITED)
_SPAN_FLAGS: Final = wire.tag(16, wire.FIXED32)
# Span.Link
_LINK_ATTRIBUTE: Final = wire.tag(4, wire.LENGTH_DELIMITED)
_LINK_DROPPED_ATTRIBUTES: Final = wire.tag(5, wire.VARINT)
_LINK_FLAGS: Final = wire.tag(6, wire.FIXED32)
# Status
_STATUS_MESSAGE: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_STATUS_CODE: Final = wire.tag(3, wire.VARINT)
# KeyValue, AnyValue
_KEY: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_VALUE: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_STRING_VALUE: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_BOOL_VALUE: Final = wire.tag(2, wire.VARINT)
_INT_VALUE: Final = wire.tag(3, wire.VARINT)
_DOUBLE_VALUE: Final = wire.tag(4, wire.FIXED64)
_BYTES_VALUE: Final = wire.tag(7, wire.LENGTH_DELIMITED)

# SpanFlags: the parent's (or link's) context says whether it is remote.
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
_FIXED64_FORMAT: Final = struct.Struct("<Q")
_FIXED32_FORMAT: Final = struct.Struct("<I")
_DOUBLE_FORMAT: Final = struct.Struct("<d")
_TRACE_ID_HEAD: Final = _TRACE_ID + bytes([16])
_SPAN_ID_HEAD: Final = _SPAN_ID + bytes([8])
_PARENT_SPAN_ID_HEAD: Final = _PARENT_SPAN_ID + bytes([8])
# KeyValue messages written already, by (key, type, value): strings, booleans and
# integers only (a float's key would join 0.0 and -0.0, whose bytes differ).
_MEMO_TYPES: Final = (str, bool, int)
_KEY_VALUE_MEMO_SIZE: Final = 4096
_KEY_VALUES: dict[tuple[str, type, Any], bytes] = {}


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):  # before int: a bool is an int
        return _BOOL_VALUE + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return wire.length_delimited(_STRING_VALUE, value.encode())
    if isinstance(value, int):
        return _INT_VALUE + wire.varint(value)
    if isinstance(value, float):
        return _DOUBLE_VALUE + _DOUBLE_FORMAT.pack(value)
    if isinstance(value, bytes):
        return wire.length_delimited(_BYTES_VALUE, value)
    return _encode_value(value).SerializeToString()  # lists, maps: the SDK's way


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message; the same few pairs recur on every span (the RPC's names, the
    model's name and version), so they are written once and kept (a bounded memo)."""
    memo_key = (key, type(value), value) if isinstance(value, _MEMO_TYPES) else None
    if memo_key is not None:
        known = _KEY_VALUES.get(memo_key)
        if known is not None:
            return known
    encoded = wire.length_delimited(_KEY, key.encode()) + wire.length_delimited(
        _VALUE, _any_value(value)
    )
    if memo_key is not None:
        if len(_KEY_VALUES) >= _KEY_VALUE_MEMO_SIZE:
            _KEY_VALUES.clear()  # unique values (request ids) would fill it: start again
        _KEY_VALUES[memo_key] = encoded
    return encoded


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
    if not attributes:
        return []
    return [wire.length_delimited(tag, _key_value(key, value)) for key, value in attributes.items()]


def _flags(context: SpanContext | None) -> bytes:
    remote = context is not None and context.is_remote
    return _FIXED32_FORMAT.pack(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))


def _trace_state(context: SpanContext) -> bytes:
    state = context.trace_state
    if not state:
        return b""
    return wire.length_delimited(
        _TRACE_STATE, ",".join(f"{key}={value}" for key, value in state.items()).encode()
    )


def _link(link: Link) -> bytes:
    context = link.context
    parts = [
        _TRACE_ID_HEAD + context.trace_id.to_bytes(16, "big"),
        _SPAN_ID_HEAD + context.span_id.to_bytes(8, "big"),
        *_attributes(_LINK_ATTRIBUTE, link.attributes),
    ]
    if link.dropped_attributes:
        parts.append(_LINK_DROPPED_ATTRIBUTES + wire.varint(link.dropped_attributes))
    parts.append(_LINK_FLAGS + _flags(context))
    return wire.length_delimited(_LINK, b"".join(parts))


def encode_span(span: ReadableSpan) -> bytes:
    """One `Span` message (without its tag in ScopeSpans)."""
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one
    parent = span.parent
    parts = [
        _TRACE_ID_HEAD + context.trace_id.to_bytes(16, "big"),
        _SPAN_ID_HEAD + context.span_id.to_bytes(8, "big"),
        _trace_state(context),
    ]
    if parent is not None:
        parts.append(_PARENT_SPAN_ID_HEAD + parent.span_id.to_bytes(8, "big"))
    if span.name:
        parts.append(wire.length_delimited(_NAME, span.name.encode()))
    # The SDK's SpanKind counts from 0 (INTERNAL), OTLP's from 1 (0 is UNSPECIFIED).
    parts.append(_KIND + wire.varint(span.kind.value + 1))
    parts.append(_START + _FIXED64_FORMAT.pack(span.start_time or 0))
    parts.append(_END + _FIXED64_FORMAT.pack(span.end_time or 0))
    parts.extend(_attributes(_ATTRIBUTE, span.attributes))
    if span.dropped_attributes:
        parts.append(_DROPPED_ATTRIBUTES + wire.varint(span.dropped_attributes))
    for event in _encode_events(span.events) or ():
        parts.append(wire.length_delimited(_EVENT, event.SerializeToString()))
    if span.dropped_events:
        parts.append(_DROPPED_EVENTS + wire.varint(span.dropped_events))
    parts.extend(_link(link) for link in span.links)
    if span.dropped_links:
        parts.append(_DROPPED_LINKS + wire.varint(span.dropped_links))
    status = span.status
    status_parts = b""
    if status.description:
        status_parts += wire.length_delimited(_STATUS_MESSAGE, status.description.encode())
    if status.status_code.value:
        status_parts += _STATUS_CODE + wire.varint(status.status_code.value)
    parts.append(wire.length_delimited(_STATUS, status_parts))
    parts.append(_SPAN_FLAGS + _flags(parent))
    return b"".join(parts)


def _head(encoded: bytes, schema_url: str | None) -> bytes:
    """A group's first fields: its resource or scope, then that one's schema URL if any."""
    return wire.length_delimited(_GROUP_HEAD, encoded) + wire.string_field(
        _SCHEMA_URL, schema_url or ""
    )


class _Heads:
    """The encoded resources and scopes, each written once (a process has a handful)."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[object, bytes]] = {}

    def resource(self, resource: Resource) -> bytes:
        return self._once(
            resource,
            lambda: _head(_encode_resource(resource).SerializeToString(), resource.schema_url),
        )

    def scope(self, scope: InstrumentationScope | None) -> bytes:
        if scope is None:  # an empty scope, as the SDK writes it
            return _head(b"", None)
        return self._once(
            scope,
            lambda: _head(
                _encode_instrumentation_scope(scope).SerializeToString(), scope.schema_url
            ),
        )

    def _once(self, head: object, write: Callable[[], bytes]) -> bytes:
        known = self._known.get(id(head))
        if known is None or known[0] is not head:  # an id can be reused once freed
            known = (head, write())
            self._known[id(head)] = known
        return known[1]


class SpanEncoder:
    """`encode(spans)`: the bytes of one ExportTraceServiceRequest holding `spans`."""

    def __init__(self) -> None:
        self._heads = _Heads()

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        # Grouped as OTLP nests them, resource -> scope -> spans, in the order first seen.
        groups: dict[int, tuple[Resource, dict[int, tuple[Any, list[bytes]]]]] = {}
        for span in spans:
            resource = span.resource
            scopes = groups.setdefault(id(resource), (resource, {}))[1]
            scope = span.instrumentation_scope
            scopes.setdefault(id(scope), (scope, []))[1].append(
                wire.length_delimited(_GROUP_ITEMS, encode_span(span))
            )
        heads = self._heads
        out: list[bytes] = []
        for resource, scopes in groups.values():
            scope_spans = b"".join(
                wire.length_delimited(_GROUP_ITEMS, heads.scope(scope) + b"".join(encoded))
                for scope, encoded in scopes.values()
            )
            out.append(
                wire.length_delimited(_RESOURCE_SPANS, heads.resource(resource) + scope_spans)
            )
        return b"".join(out)


class OtlpHttpSpanExporter(SdkHttpSpanExporter):
    """The SDK's OTLP/HTTP span exporter (its settings, transport, retries and own metrics)
    sending the body `SpanEncoder` writes."""

    def __init__(self) -> None:
        super().__init__()
        self._encoder = SpanEncoder()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            logger.warning("tracing: export after shutdown ignored")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                body = self._encoder.encode(spans)
            except Exception as error:  # a span the writer cannot spell: this batch is lost
                logger.exception("tracing: cannot encode a batch of %d spans", len(spans))
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(body, self._max_request_size):
                logger.warning(
                    "tracing: a batch of %d spans (%d bytes) is over the exporter's "
                    "max_request_size: dropped",
                    len(spans),
                    len(body),
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(body)
            if not sent.success:
                result.error = sent.error
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
