"""OTLP trace export over HTTP, the request body written straight to protobuf bytes.

The SDK's OTLP/HTTP exporter encodes a batch of spans by building a protobuf object for
every span, attribute, link and value, and by hashing each span's resource (as JSON) to
group the spans; on this server that cost more CPU than the spans themselves
(docs/performance.md). `SpanEncoder` writes the same `ExportTraceServiceRequest`
(opentelemetry-proto's `collector/trace/v1`; byte for byte what the SDK's encoder
serializes, tests/unit/tracing/test_otlp_spans.py) field by field, with the resource and
instrumentation scope encoded once and kept.

`OtlpHttpSpanExporter` sends that body. It is built on the SDK's public API only (the
`SpanExporter` interface, `ReadableSpan`'s public attributes, the variables' names in
`opentelemetry.sdk.environment_variables`), so an SDK upgrade that moves its private
modules cannot break tracing. It reads the OTEL_EXPORTER_OTLP_TRACES_* variables (each
falling back to its OTEL_EXPORTER_OTLP_* form) as the SDK's OTLP/HTTP exporter does:
the endpoint (a signal endpoint as it is; a base endpoint with `/v1/traces` added; by
default http://localhost:4318/v1/traces), headers (W3C baggage form, URL-decoded),
certificate, client key and certificate, compression (`gzip`, `deflate` or `none`) and the
timeout (in seconds, as the Python SDK reads it, default 10; the spec's milliseconds are
not what the SDK has ever read here). It retries as the SDK does: 429, 502, 503, 504 and
connection errors, up to 6 attempts, backing off 1, 2, 4 ... s (+-20% jitter, or the
answer's Retry-After), never past the timeout counted from the export's start, and a
connection error once more at once (a stale pooled connection); a shutdown ends the wait.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import random
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final

import requests
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_COMPRESSION,
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_HEADERS,
    OTEL_EXPORTER_OTLP_TIMEOUT,
    OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
    OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY,
    OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_HEADERS,
    OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace import Link, SpanContext
from opentelemetry.util.re import parse_env_headers

from mnist_serving_server import protobuf_wire as wire

logger = logging.getLogger(__name__)

# ExportTraceServiceRequest.resource_spans; ResourceSpans.resource, .scope_spans, .schema_url;
# ScopeSpans.scope, .spans, .schema_url (the same numbers in both messages).
_RESOURCE_SPANS: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_GROUP_HEAD: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_GROUP_ITEMS: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_SCHEMA_URL: Final = wire.tag(3, wire.LENGTH_DELIMITED)
# Resource.attributes; InstrumentationScope.name, .version, .attributes
_RESOURCE_ATTRIBUTE: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_SCOPE_NAME: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_SCOPE_VERSION: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_SCOPE_ATTRIBUTE: Final = wire.tag(3, wire.LENGTH_DELIMITED)
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
# Span.Event
_EVENT_TIME: Final = wire.tag(1, wire.FIXED64)
_EVENT_NAME: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_EVENT_ATTRIBUTE: Final = wire.tag(3, wire.LENGTH_DELIMITED)
_EVENT_DROPPED_ATTRIBUTES: Final = wire.tag(4, wire.VARINT)
# Span.Link
_LINK_ATTRIBUTE: Final = wire.tag(4, wire.LENGTH_DELIMITED)
_LINK_DROPPED_ATTRIBUTES: Final = wire.tag(5, wire.VARINT)
_LINK_FLAGS: Final = wire.tag(6, wire.FIXED32)
# Status
_STATUS_MESSAGE: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_STATUS_CODE: Final = wire.tag(3, wire.VARINT)
# KeyValue, AnyValue; ArrayValue.values and KeyValueList.values
_KEY: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_VALUE: Final = wire.tag(2, wire.LENGTH_DELIMITED)
_STRING_VALUE: Final = wire.tag(1, wire.LENGTH_DELIMITED)
_BOOL_VALUE: Final = wire.tag(2, wire.VARINT)
_INT_VALUE: Final = wire.tag(3, wire.VARINT)
_DOUBLE_VALUE: Final = wire.tag(4, wire.FIXED64)
_ARRAY_VALUE: Final = wire.tag(5, wire.LENGTH_DELIMITED)
_KEY_VALUE_LIST: Final = wire.tag(6, wire.LENGTH_DELIMITED)
_BYTES_VALUE: Final = wire.tag(7, wire.LENGTH_DELIMITED)
_LIST_ITEM: Final = wire.tag(1, wire.LENGTH_DELIMITED)

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
    """An AnyValue message's fields, as the SDK's encoder writes each Python type."""
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
    if value is None:
        return b""  # an empty AnyValue
    if isinstance(value, Sequence):
        items = b"".join(wire.length_delimited(_LIST_ITEM, _any_value(item)) for item in value)
        return wire.length_delimited(_ARRAY_VALUE, items)
    if isinstance(value, Mapping):
        pairs = b"".join(
            wire.length_delimited(_LIST_ITEM, _key_value(str(key), item))
            for key, item in value.items()
        )
        return wire.length_delimited(_KEY_VALUE_LIST, pairs)
    raise TypeError(f"an attribute value of type {type(value).__name__} has no OTLP form")


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message; the same few pairs recur on every span (the RPC's names, the
    model's name and version), so they are written once and kept (a bounded memo)."""
    memo_key = (key, type(value), value) if isinstance(value, _MEMO_TYPES) else None
    if memo_key is not None:
        known = _KEY_VALUES.get(memo_key)
        if known is not None:
            return known
    encoded = wire.string_field(_KEY, key) + wire.length_delimited(_VALUE, _any_value(value))
    if memo_key is not None:
        if len(_KEY_VALUES) >= _KEY_VALUE_MEMO_SIZE:
            _KEY_VALUES.clear()  # unique values (request ids) would fill it: start again
        _KEY_VALUES[memo_key] = encoded
    return encoded


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> list[bytes]:
    if not attributes:
        return []
    try:
        return [
            wire.length_delimited(tag, _key_value(key, value)) for key, value in attributes.items()
        ]
    except TypeError:  # a value with no OTLP form: that pair left out, as the SDK does
        return list(_attributes_one_by_one(tag, attributes))


def _attributes_one_by_one(tag: bytes, attributes: Mapping[str, Any]) -> Iterator[bytes]:
    for key, value in attributes.items():
        try:
            yield wire.length_delimited(tag, _key_value(key, value))
        except TypeError:
            logger.exception("tracing: attribute %r left out of the export", key)


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


def _event(event: Event) -> bytes:
    parts = [_EVENT_TIME + _FIXED64_FORMAT.pack(event.timestamp)] if event.timestamp else []
    parts.append(wire.string_field(_EVENT_NAME, event.name))
    parts.extend(_attributes(_EVENT_ATTRIBUTE, event.attributes))
    if event.dropped_attributes:
        parts.append(_EVENT_DROPPED_ATTRIBUTES + wire.varint(event.dropped_attributes))
    return wire.length_delimited(_EVENT, b"".join(parts))


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
    if span.start_time:
        parts.append(_START + _FIXED64_FORMAT.pack(span.start_time))
    if span.end_time:
        parts.append(_END + _FIXED64_FORMAT.pack(span.end_time))
    parts.extend(_attributes(_ATTRIBUTE, span.attributes))
    if span.dropped_attributes:
        parts.append(_DROPPED_ATTRIBUTES + wire.varint(span.dropped_attributes))
    if span.events:
        parts.extend(_event(event) for event in span.events)
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


def _head(encoded: bytes, schema_url: str | None) -> tuple[bytes, bytes]:
    """A group's first field (its resource or scope) and its last (that one's schema URL,
    if any): the group's items go between them, in field order as protobuf writes it."""
    return wire.length_delimited(_GROUP_HEAD, encoded), wire.string_field(
        _SCHEMA_URL, schema_url or ""
    )


def _resource(resource: Resource) -> bytes:
    return b"".join(_attributes(_RESOURCE_ATTRIBUTE, resource.attributes))


def _scope(scope: InstrumentationScope) -> bytes:
    return (
        wire.string_field(_SCOPE_NAME, scope.name)
        + wire.string_field(_SCOPE_VERSION, scope.version or "")
        + b"".join(_attributes(_SCOPE_ATTRIBUTE, scope.attributes))
    )


class _Heads:
    """The encoded resources and scopes, each written once (a process has a handful)."""

    def __init__(self) -> None:
        self._known: dict[int, tuple[object, tuple[bytes, bytes]]] = {}

    def resource(self, resource: Resource) -> tuple[bytes, bytes]:
        return self._once(resource, lambda: _head(_resource(resource), resource.schema_url))

    def scope(self, scope: InstrumentationScope | None) -> tuple[bytes, bytes]:
        if scope is None:  # an empty scope, as the SDK writes it
            return _head(b"", None)
        return self._once(scope, lambda: _head(_scope(scope), scope.schema_url))

    def _once(self, head: object, write: Callable[[], tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
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
            parts = list(heads.resource(resource))
            for scope, encoded in scopes.values():
                scope_head, scope_tail = heads.scope(scope)
                scope_spans = scope_head + b"".join(encoded) + scope_tail
                parts.insert(-1, wire.length_delimited(_GROUP_ITEMS, scope_spans))
            out.append(wire.length_delimited(_RESOURCE_SPANS, b"".join(parts)))
        return b"".join(out)


DEFAULT_ENDPOINT: Final = "http://localhost:4318"
TRACES_PATH: Final = "v1/traces"
DEFAULT_TIMEOUT_S: Final = 10.0
COMPRESSIONS: Final = ("none", "gzip", "deflate")
MAX_REQUEST_BYTES: Final = 64 * 1024 * 1024
"""A body over this (before compression) is dropped, not sent (the SDK's default)."""
MAX_ATTEMPTS: Final = 6
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
BACKOFF_JITTER: Final = 0.2
USER_AGENT: Final = f"OTel-OTLP-Exporter-Python/{sdk_version}"
# What requests raises when no answer came: worth another try.
_CONNECTION_ERRORS: Final = (requests.ConnectionError, requests.Timeout)


def _first(environ: Mapping[str, str], *names: str) -> str:
    """The first of these variables that is set and not empty, else ''."""
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return ""


@dataclass(frozen=True)
class OtlpHttpSettings:
    """Where and how the spans are sent, from the OTEL_EXPORTER_OTLP_* variables."""

    endpoint: str
    headers: Mapping[str, str]
    timeout_s: float
    compression: str
    verify: bool | str
    cert: str | tuple[str, str] | None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> OtlpHttpSettings:
        endpoint = _first(environ, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
        if not endpoint:
            base = _first(environ, OTEL_EXPORTER_OTLP_ENDPOINT) or DEFAULT_ENDPOINT
            endpoint = f"{base.removesuffix('/')}/{TRACES_PATH}"
        headers = {"content-type": "application/x-protobuf", "user-agent": USER_AGENT}
        headers.update(
            parse_env_headers(
                _first(environ, OTEL_EXPORTER_OTLP_TRACES_HEADERS, OTEL_EXPORTER_OTLP_HEADERS),
                liberal=True,
            )
        )
        named = _first(
            environ, OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, OTEL_EXPORTER_OTLP_COMPRESSION
        )
        compression = named.strip().lower() or "none"
        if compression not in COMPRESSIONS:
            logger.warning("tracing: unsupported OTLP compression %r: none used", compression)
            compression = "none"
        if compression != "none" and "content-encoding" not in headers:
            headers["content-encoding"] = compression
        key = _first(environ, OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY, OTEL_EXPORTER_OTLP_CLIENT_KEY)
        certificate = _first(
            environ,
            OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE,
            OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE,
        )
        return cls(
            endpoint=endpoint,
            headers=headers,
            timeout_s=_timeout_s(
                _first(environ, OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, OTEL_EXPORTER_OTLP_TIMEOUT)
            ),
            compression=compression,
            verify=_first(
                environ, OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE, OTEL_EXPORTER_OTLP_CERTIFICATE
            )
            or True,
            cert=(certificate, key) if certificate and key else certificate or None,
        )


def _timeout_s(text: str) -> float:
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        return float(text)
    except ValueError:
        logger.warning("tracing: invalid OTLP timeout %r: %.0f s used", text, DEFAULT_TIMEOUT_S)
        return DEFAULT_TIMEOUT_S


def _compressed(body: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(body, mtime=0)
    if compression == "deflate":
        return zlib.compress(body)
    return body


def _retry_after_s(response: requests.Response) -> float | None:
    """The answer's Retry-After (RFC 9110: seconds, or an HTTP date), None if none."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP date is in GMT
            when = when.replace(tzinfo=UTC)
        return max(when.timestamp() - time.time(), 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


class OtlpHttpSpanExporter(SpanExporter):
    """Exports spans to an OTLP/HTTP endpoint (`http/protobuf`), each batch's body written
    by `SpanEncoder`, configured and retried as the SDK's own OTLP/HTTP exporter."""

    def __init__(
        self, environ: Mapping[str, str] | None = None, session: requests.Session | None = None
    ) -> None:
        self.settings = OtlpHttpSettings.from_environ(os.environ if environ is None else environ)
        self._session = session if session is not None else requests.Session()
        self._session.verify = self.settings.verify
        if self.settings.cert is not None:
            self._session.cert = self.settings.cert
        self._headers = dict(self.settings.headers)
        self._encoder = SpanEncoder()
        self._stopped = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped.is_set():
            logger.warning("tracing: export after shutdown ignored")
            return SpanExportResult.FAILURE
        try:
            body = self._encoder.encode(spans)
        except Exception:  # a span the writer cannot spell: this batch is lost
            logger.exception("tracing: cannot encode a batch of %d spans", len(spans))
            return SpanExportResult.FAILURE
        if len(body) > MAX_REQUEST_BYTES:
            logger.warning(
                "tracing: a batch of %d spans (%d bytes) is over %d bytes: dropped",
                len(spans),
                len(body),
                MAX_REQUEST_BYTES,
            )
            return SpanExportResult.FAILURE
        sent = self._send(_compressed(body, self.settings.compression))
        return SpanExportResult.SUCCESS if sent else SpanExportResult.FAILURE

    def _send(self, data: bytes) -> bool:
        """POST `data`, retrying what may pass later until the timeout; True once accepted."""
        deadline = time.monotonic() + self.settings.timeout_s
        for attempt in range(MAX_ATTEMPTS):
            backoff = 2**attempt * random.uniform(1 - BACKOFF_JITTER, 1 + BACKOFF_JITTER)
            answer = self._post(data, deadline)
            if isinstance(answer, requests.Response):
                if 200 <= answer.status_code < 400:
                    return True
                problem = f"HTTP {answer.status_code} {answer.reason}"
                retryable = answer.status_code in RETRYABLE_STATUSES
                retry_after = _retry_after_s(answer) if retryable else None
                backoff = backoff if retry_after is None else retry_after
            else:
                problem = f"{type(answer).__name__}: {answer}"
                retryable = isinstance(answer, _CONNECTION_ERRORS)
            if not retryable:
                logger.error(
                    "tracing: OTLP export to %s failed: %s", self.settings.endpoint, problem
                )
                return False
            if (
                attempt + 1 == MAX_ATTEMPTS
                or backoff > deadline - time.monotonic()
                or self._stopped.is_set()
            ):
                logger.error(
                    "tracing: OTLP export to %s failed after %d attempts (%s): batch dropped",
                    self.settings.endpoint,
                    attempt + 1,
                    problem,
                )
                return False
            logger.warning(
                "tracing: OTLP export to %s: %s, retrying in %.2f s",
                self.settings.endpoint,
                problem,
                backoff,
            )
            if self._stopped.wait(backoff):
                logger.warning("tracing: shutting down: OTLP export retry abandoned")
                return False
        return False

    def _post(self, data: bytes, deadline: float) -> requests.Response | Exception:
        """One POST; a connection error once more at once, while time is left (the pool's
        connection may have been closed by the other end)."""
        answer = self._request(data, max(deadline - time.monotonic(), 0.0))
        if isinstance(answer, _CONNECTION_ERRORS):
            remaining = deadline - time.monotonic()
            if remaining > 0:
                answer = self._request(data, remaining)
        return answer

    def _request(self, data: bytes, timeout_s: float) -> requests.Response | Exception:
        try:
            return self._session.post(
                self.settings.endpoint,
                data=data,
                headers=self._headers,
                timeout=timeout_s,
                allow_redirects=False,
            )
        except Exception as error:  # requests' and urllib3's, and a bad URL's: a failed try
            return error

    def shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._session.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing is buffered here (the batch processor holds the spans)."""
        return True
