"""Protobuf's wire format, for the few messages this server writes field by field.

Two messages are written per call or per span at rates where building a protobuf object
first costs more than the work around it: the V2 `ModelInferResponse` of a raw reply
(grpc_api/v2_tensors.py) and OTLP's span export (otlp_spans.py). Both write with these
helpers; tests decode what they write with the generated classes and compare.
"""

from __future__ import annotations

from typing import Final

VARINT: Final = 0
FIXED64: Final = 1
LENGTH_DELIMITED: Final = 2
FIXED32: Final = 5

_UINT64: Final = 1 << 64
_ONE_BYTE_VARINTS: Final = tuple(bytes([value]) for value in range(128))


def tag(field: int, wire_type: int) -> bytes:
    """A field's key: (field number << 3) | wire type, as a varint."""
    return varint(field << 3 | wire_type)


def varint(value: int) -> bytes:
    """An integer as a base-128 varint; a negative one as int64's ten-byte two's complement."""
    if 0 <= value < 128:
        return _ONE_BYTE_VARINTS[value]
    if value < 0:
        value += _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(key: bytes, payload: bytes) -> bytes:
    """A string, bytes or message field: its key, the payload's length, the payload."""
    size = len(payload)
    return key + (_ONE_BYTE_VARINTS[size] if size < 128 else varint(size)) + payload


def string_field(key: bytes, text: str) -> bytes:
    """A proto3 string field; nothing for the empty string (its default is not written)."""
    return length_delimited(key, text.encode()) if text else b""
