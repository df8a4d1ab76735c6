"""What the worker processes of one server say to each other (`peers.py` carries it).

One JSON line per message over a Unix socket. A request is an `Operation` and its fields; a
reply is the operation's result or an error. Every message has a schema here (a dataclass)
and is checked against it when it arrives, so the link itself only ever handles typed
values. Errors travel by kind (`ErrorKind`), never by message text or class name: the
receiving worker raises the same error kind with the peer's caller-safe message, so the
transports answer exactly as for a failure in their own process.

A peer that cannot be reached is `PeerUnreachableError` (UNAVAILABLE / 503: workers are
supervised together, so the server is restarting); a peer that failed unexpectedly, or a
message that does not fit its schema, is `PeerFailedError` (INTERNAL / 500, generic message;
the details are in that worker's log).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeAlias, TypeVar

from mnist_serving_server.core import errors
from mnist_serving_server.core.registry import IndexEntry, ModelState
from mnist_serving_server.core.replicas import StatisticsRecord


class PeerUnreachableError(errors.NotReadyError):
    """A sibling worker did not answer in time or closed the connection."""


class PeerFailedError(errors.InternalError):
    """A sibling worker failed a request unexpectedly, or answered out of schema."""


class Operation(StrEnum):
    """What one worker may ask another."""

    LOAD = "load"
    UNLOAD = "unload"
    POLL = "poll"
    INDEX = "index"
    STATISTICS = "statistics"


CHANGES: Final = frozenset({Operation.LOAD, Operation.UNLOAD, Operation.POLL})
"""The operations that change the repository (ordered by the leader)."""


class ErrorKind(StrEnum):
    """The errors a peer answers with; each is raised again as its class on arrival."""

    INVALID_INPUT = "invalid_input"
    FAILED_PRECONDITION = "failed_precondition"
    MODEL_NOT_FOUND = "model_not_found"
    QUEUE_FULL = "queue_full"
    NOT_READY = "not_ready"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"
    """Anything else: the peer logged it; the caller answers INTERNAL."""


_ERROR_CLASSES: Final[Mapping[ErrorKind, type[errors.ServingError]]] = {
    ErrorKind.INVALID_INPUT: errors.InvalidInputError,
    ErrorKind.FAILED_PRECONDITION: errors.FailedPreconditionError,
    ErrorKind.MODEL_NOT_FOUND: errors.ModelNotFoundError,
    ErrorKind.QUEUE_FULL: errors.QueueFullError,
    ErrorKind.NOT_READY: errors.NotReadyError,
    ErrorKind.DEADLINE_EXCEEDED: errors.DeadlineExceededError,
    ErrorKind.INTERNAL: PeerFailedError,
}
_KIND_BY_CLASS: Final = {cls: kind for kind, cls in _ERROR_CLASSES.items()}


# --- requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeRequest:
    """Apply a repository change: here only, or (`everywhere`, sent to the leader by a
    follower) in every worker, in the leader's order."""

    operation: Operation
    name: str = ""
    everywhere: bool = False


@dataclass(frozen=True, slots=True)
class IndexRequest:
    """This worker's repository index."""


@dataclass(frozen=True, slots=True)
class StatisticsRequest:
    """This worker's statistics of `name`/`version` ("" = all)."""

    name: str
    version: str


PeerRequest: TypeAlias = ChangeRequest | IndexRequest | StatisticsRequest


# --- replies ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeDone:
    """The change is applied (everywhere it was asked to be)."""


@dataclass(frozen=True, slots=True)
class IndexReply:
    entries: tuple[IndexEntry, ...]


@dataclass(frozen=True, slots=True)
class StatisticsReply:
    records: tuple[StatisticsRecord, ...]


@dataclass(frozen=True, slots=True)
class ErrorReply:
    kind: ErrorKind
    message: str = ""
    """The error's caller-safe message; empty for INTERNAL (never shown)."""

    @classmethod
    def of(cls, exc: errors.ServingError) -> ErrorReply:
        """The reply for an error kind (its nearest mapped class); INTERNAL for the rest."""
        for klass in type(exc).__mro__:
            kind = _KIND_BY_CLASS.get(klass)
            if kind is ErrorKind.INTERNAL:
                break
            if kind is not None:
                return cls(kind, str(exc))
        return cls(ErrorKind.INTERNAL)

    def error(self, context: str) -> errors.ServingError:
        """The exception to raise for this reply; `context` says which call failed (an
        INTERNAL error's message, which goes only to the log)."""
        if self.kind is ErrorKind.INTERNAL:
            return PeerFailedError(context)
        return _ERROR_CLASSES[self.kind](self.message)


PeerReply: TypeAlias = ChangeDone | IndexReply | StatisticsReply
ReplyT = TypeVar("ReplyT", ChangeDone, IndexReply, StatisticsReply)

REPLY_TYPES: Final[Mapping[Operation, type[PeerReply]]] = {
    Operation.LOAD: ChangeDone,
    Operation.UNLOAD: ChangeDone,
    Operation.POLL: ChangeDone,
    Operation.INDEX: IndexReply,
    Operation.STATISTICS: StatisticsReply,
}
"""Which reply each operation gets."""


# --- the wire: one JSON object per line ---------------------------------------------------


class MalformedMessageError(ValueError):
    """A line that does not fit the schema (a bug in the sibling, or a broken stream)."""


def operation_of(request: PeerRequest) -> Operation:
    if isinstance(request, ChangeRequest):
        return request.operation
    if isinstance(request, IndexRequest):
        return Operation.INDEX
    return Operation.STATISTICS


def encode_request(request: PeerRequest) -> bytes:
    document: dict[str, object] = {"op": operation_of(request).value}
    if isinstance(request, ChangeRequest):
        document["name"] = request.name
        document["everywhere"] = request.everywhere
    elif isinstance(request, StatisticsRequest):
        document["name"] = request.name
        document["version"] = request.version
    return _line(document)


def decode_request(line: bytes) -> PeerRequest:
    document = _object(line)
    operation = _member(Operation, _field(document, "op", str))
    if operation in CHANGES:
        return ChangeRequest(
            operation, _field(document, "name", str), _field(document, "everywhere", bool)
        )
    if operation is Operation.INDEX:
        return IndexRequest()
    return StatisticsRequest(_field(document, "name", str), _field(document, "version", str))


def encode_reply(reply: PeerReply | ErrorReply) -> bytes:
    if isinstance(reply, ErrorReply):
        return _line({"error": reply.kind.value, "message": reply.message})
    result: object = None
    if isinstance(reply, IndexReply):
        result = [
            {"name": e.name, "version": e.version, "state": e.state.value, "reason": e.reason}
            for e in reply.entries
        ]
    elif isinstance(reply, StatisticsReply):
        result = list(reply.records)
    return _line({"result": result})


def decode_reply(line: bytes, expected: type[ReplyT]) -> ReplyT | ErrorReply:
    """The reply in `line`, which must be an `expected` or an error."""
    document = _object(line)
    if "error" in document:
        kind = _member(ErrorKind, _field(document, "error", str))
        return ErrorReply(kind, _field(document, "message", str))
    if "result" not in document:
        raise MalformedMessageError("a reply holds neither a result nor an error")
    result = document["result"]
    reply: PeerReply
    if expected is IndexReply:
        reply = IndexReply(tuple(_index_entry(row) for row in _list(result)))
    elif expected is StatisticsReply:
        reply = StatisticsReply(tuple(_statistics(row) for row in _list(result)))
    else:
        reply = ChangeDone()
    if not isinstance(reply, expected):  # pragma: no cover - the branches above match
        raise MalformedMessageError(f"cannot decode a {expected.__name__}")
    return reply


def _line(document: Mapping[str, object]) -> bytes:
    return json.dumps(document).encode() + b"\n"


def _object(line: bytes) -> dict[str, object]:
    try:
        document = json.loads(line)
    except ValueError as exc:
        raise MalformedMessageError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedMessageError("a message must be a JSON object")
    return document


_FieldT = TypeVar("_FieldT", str, bool)


def _field(document: Mapping[str, object], key: str, kind: type[_FieldT]) -> _FieldT:
    value = document.get(key, kind())
    if not isinstance(value, kind):
        raise MalformedMessageError(f"{key!r} must be a {kind.__name__}")
    return value


_EnumT = TypeVar("_EnumT", bound=StrEnum)


def _member(enum: type[_EnumT], value: str) -> _EnumT:
    try:
        return enum(value)
    except ValueError:
        raise MalformedMessageError(f"{value!r} is no {enum.__name__}") from None


def _list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise MalformedMessageError("a result must be a list")
    return value


def _index_entry(row: object) -> IndexEntry:
    if not isinstance(row, dict):
        raise MalformedMessageError("an index row must be an object")
    state = _member(ModelState, _field(row, "state", str))
    return IndexEntry(
        _field(row, "name", str), _field(row, "version", str), state, _field(row, "reason", str)
    )


def _statistics(row: object) -> StatisticsRecord:
    # Triton's statistics record (core.triton_records) travels as the JSON it already is;
    # the merge (core.replicas) reads its fields.
    if not isinstance(row, dict) or not isinstance(row.get("name"), str):
        raise MalformedMessageError("a statistics record must be an object with a name")
    return row
