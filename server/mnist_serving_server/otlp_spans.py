"""OTLP trace export with the request body written straight to protobuf bytes.

The SDK's OTLP/HTTP exporter encodes a batch of spans by building a protobuf object for
every span, attribute, link and value, and by hashing each span's resource (as JSON) to
group the spans; on this server that cost more CPU than the spans themselves
(docs/performance.md). `encode_spans` writes the same `ExportTraceServiceRequest`
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
from collections.abc import Mapping, Sequence
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
from opentelemetry.trace import SpanContext

logger = logging.getLogger(__name__)

# Wire types, and the tags (field number << 3 | wire type) of the fields written here.
_VARINT: Final = 0
_FIXED64: Final = 1
_LENGTH: Final = 2
_FIXED32: Final = 5


def _tag(field: int, wire_type: int) -> bytes:
    return bytes([field << 3 | wire_type])


# ExportTraceServiceRequest.resource_spans; ResourceSpans.resource, .scope_spans, .schema_url;
# ScopeSpans.scope, .spans, .schema_url (the same numbers in both messages).
_RESOURCE_SPANS: Final = _tag(1, _LENGTH)
_GROUP_HEAD: Final = _tag(1, _LENGTH)
_GROUP_ITEMS: Final = _tag(2, _LENGTH)
_SCHEMA_URL: Final = _tag(3, _LENGTH)
# Span
_TRACE_ID: Final = _tag(1, _LENGTH)
_SPAN_ID: Final = _tag(2, _LENGTH)
_TRACE_STATE: Final = _tag(3, _LENGTH)
_PARENT_SPAN_ID: Final = _tag(4, _LENGTH)
_NAME: Final = _tag(5, _LENGTH)
_KIND: Final = _tag(6, _VARINT)
_START: Final = _tag(7, _FIXED64)
_END: Final = _tag(8, _FIXED64)
_ATTRIBUTE: Final = _tag(9, _LENGTH)
_DROPPED_ATTRIBUTES: Final = _tag(10, _VARINT)
_EVENT: Final = _tag(11, _LENGTH)
_DROPPED_EVENTS: Final = _tag(12, _VARINT)
_LINK: Final = _tag(13, _LENGTH)
_DROPPED_LINKS: Final = _tag(14, _VARINT)
_STATUS: Final = _tag(15, _LENGTH)
_SPAN_FLAGS: Final = b"\x85\x01"  # field 16, fixed32: two bytes of tag
# Span.Link
_LINK_ATTRIBUTE: Final = _tag(4, _LENGTH)
_LINK_DROPPED_ATTRIBUTES: Final = _tag(5, _VARINT)
_LINK_FLAGS: Final = _tag(6, _FIXED32)
# Status
_STATUS_MESSAGE: Final = _tag(2, _LENGTH)
_STATUS_CODE: Final = _tag(3, _VARINT)
# KeyValue, AnyValue
_KEY: Final = _tag(1, _LENGTH)
_VALUE: Final = _tag(2, _LENGTH)
_STRING_VALUE: Final = _tag(1, _LENGTH)
_BOOL_VALUE: Final = _tag(2, _VARINT)
_INT_VALUE: Final = _tag(3, _VARINT)
_DOUBLE_VALUE: Final = _tag(4, _FIXED64)
_BYTES_VALUE: Final = _tag(7, _LENGTH)

# SpanFlags: the parent's (or link's) context says whether it is remote.
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
_UINT64: Final = 1 << 64
_SMALL_VARINTS: Final = tuple(bytes([value]) for value in range(128))
_FIXED64_FORMAT: Final = struct.Struct("<Q")
_FIXED32_FORMAT: Final = struct.Struct("<I")
_DOUBLE_FORMAT: Final = struct.Struct("<d")
_TRACE_ID_HEAD: Final = _TRACE_ID + bytes([16])
_SPAN_ID_HEAD: Final = _SPAN_ID + bytes([8])
_PARENT_SPAN_ID_HEAD: Final = _PARENT_SPAN_ID + bytes([8])
# KeyValue messages written already, by (key, type, value); hashable scalars only.
_MEMO_TYPES: Final = (str, bool, int, float)
_KEY_VALUE_MEMO_SIZE: Final = 4096
_KEY_VALUES: dict[tuple[str, type, Any], bytes] = {}


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL_VARINTS[value]
    if value < 0:  # int64: ten bytes of two's complement, as protobuf writes it
        value += _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    size = len(payload)
    return tag + (_SMALL_VARINTS[size] if size < 128 else _varint(size)) + payload


def _any_value(value: Any) -> bytes:
    if isinstance(value, bool):  # before int: a bool is an int
        return _BOOL_VALUE + (b"\x01" if value else b"\x00")
    if isinstance(value, str):
        return _field(_STRING_VALUE, value.encode())
    if isinstance(value, int):
        return _INT_VALUE + _varint(value)
    if isinstance(value, float):
        return _DOUBLE_VALUE + _DOUBLE_FORMAT.pack(value)
    if isinstance(value, bytes):
        return _field(_BYTES_VALUE, value)
    return bytes(_encode_value(value).SerializeToString())  # lists, maps: the SDK's way


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message; the same few pairs recur on every span (the RPC's names, the
    model's name and version), so they are written once and kept (a bounded memo)."""
    memo_key = (key, type(value), value) if isinstance(value, _MEMO_TYPES) else None
    if memo_key is not None:
        known = _KEY_VALUES.get(memo_key)
        if known is not None:
            return known
    encoded = _field(_KEY, key.encode()) + _field(_VALUE, _any_value(value))
    if memo_key is not None:
        if len(_KEY_VALUES) >= _KEY_VALUE_MEMO_SIZE:
            _KEY_VALUES.clear()  # unique values (request ids) would fill it: start again
        _KEY_VALUES[memo_key] = encoded
    return encoded


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
    if not attributes:
        return []
    return [_field(tag, _key_value(key, value)) for key, value in attributes.items()]


def _flags(context: SpanContext | None) -> bytes:
    remote = context is not None and context.is_remote
    return _FIXED32_FORMAT.pack(_HAS_IS_REMOTE | (_IS_REMOTE if remote else 0))


def _trace_state(context: SpanContext) -> bytes:
    state = context.trace_state
    if not state:
        return b""
    return _field(_TRACE_STATE, ",".join(f"{key}={value}" for key, value in state.items()).encode())


def _link(link: Any) -> bytes:
    context = link.context
    parts = [
        _TRACE_ID_HEAD + context.trace_id.to_bytes(16, "big"),
        _SPAN_ID_HEAD + context.span_id.to_bytes(8, "big"),
        *_attributes(_LINK_ATTRIBUTE, link.attributes),
    ]
    if link.dropped_attributes:
        parts.append(_LINK_DROPPED_ATTRIBUTES + _varint(link.dropped_attributes))
    parts.append(_LINK_FLAGS + _flags(context))
    return _field(_LINK, b"".join(parts))


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
        parts.append(_field(_NAME, span.name.encode()))
    parts.append(_KIND + _varint(span.kind.value + 1))  # the SDK's enum starts at 0, OTLP's at 1
    parts.append(_START + _FIXED64_FORMAT.pack(span.start_time or 0))
    parts.append(_END + _FIXED64_FORMAT.pack(span.end_time or 0))
    parts.extend(_attributes(_ATTRIBUTE, span.attributes))
    if span.dropped_attributes:
        parts.append(_DROPPED_ATTRIBUTES + _varint(span.dropped_attributes))
    for event in _encode_events(span.events) or ():
        parts.append(_field(_EVENT, event.SerializeToString()))
    if span.dropped_events:
        parts.append(_DROPPED_EVENTS + _varint(span.dropped_events))
    parts.extend(_link(link) for link in span.links)
    if span.dropped_links:
        parts.append(_DROPPED_LINKS + _varint(span.dropped_links))
    status = span.status
    status_parts = b""
    if status.description:
        status_parts += _field(_STATUS_MESSAGE, status.description.encode())
    if status.status_code.value:
        status_parts += _STATUS_CODE + _varint(status.status_code.value)
    parts.append(_field(_STATUS, status_parts))
    parts.append(_SPAN_FLAGS + _flags(parent))
    return b"".join(parts)


class _Heads:
    """The encoded resources and scopes, each written once (a process has a handful)."""

    def __init__(self) -> None:
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def resource(self, resource: Resource) -> bytes:
        known = self._resources.get(id(resource))
        if known is None or known[0] is not resource:
            body = _field(_GROUP_HEAD, _encode_resource(resource).SerializeToString())
            if resource.schema_url:
                body += _field(_SCHEMA_URL, resource.schema_url.encode())
            known = (resource, body)
            self._resources[id(resource)] = known
        return known[1]

    def scope(self, scope: InstrumentationScope | None) -> bytes:
        known = self._scopes.get(id(scope))
        if known is None or known[0] is not scope:
            if scope is None:  # an empty scope, as the SDK writes it
                body = _field(_GROUP_HEAD, b"")
            else:
                body = _field(_GROUP_HEAD, _encode_instrumentation_scope(scope).SerializeToString())
                if scope.schema_url:
                    body += _field(_SCHEMA_URL, scope.schema_url.encode())
            known = (scope, body)
            self._scopes[id(scope)] = known
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
                _field(_GROUP_ITEMS, encode_span(span))
            )
        heads = self._heads
        out: list[bytes] = []
        for resource, scopes in groups.values():
            scope_spans = b"".join(
                _field(_GROUP_ITEMS, heads.scope(scope) + b"".join(encoded))
                for scope, encoded in scopes.values()
            )
            out.append(_field(_RESOURCE_SPANS, heads.resource(resource) + scope_spans))
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
