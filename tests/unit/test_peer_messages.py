"""The workers' messages (peer_messages.py): every schema survives the wire, errors keep their
kind, and a line out of schema is refused rather than guessed at."""

from __future__ import annotations

import pytest

from mnist_serving_server.core import errors
from mnist_serving_server.core.registry import IndexEntry, ModelState
from mnist_serving_server.peer_messages import (
    ChangeDone,
    ChangeRequest,
    ErrorKind,
    ErrorReply,
    IndexReply,
    IndexRequest,
    MalformedMessageError,
    Operation,
    PeerFailedError,
    PeerRequest,
    PeerUnreachableError,
    StatisticsReply,
    StatisticsRequest,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)


@pytest.mark.parametrize(
    "request_",
    [
        ChangeRequest(Operation.LOAD, "mnist"),
        ChangeRequest(Operation.UNLOAD, "mnist", everywhere=True),
        ChangeRequest(Operation.POLL),
        IndexRequest(),
        StatisticsRequest("mnist", "2"),
    ],
)
def test_every_request_survives_the_wire(request_: PeerRequest) -> None:
    line = encode_request(request_)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert decode_request(line) == request_


def test_every_reply_survives_the_wire() -> None:
    entries = (
        IndexEntry("mnist", "1", ModelState.READY, ""),
        IndexEntry("other", "", ModelState.UNAVAILABLE, "unloaded"),
    )
    record = {"name": "mnist", "version": "1", "inference_count": 3}
    assert decode_reply(encode_reply(IndexReply(entries)), IndexReply) == IndexReply(entries)
    assert decode_reply(encode_reply(StatisticsReply((record,))), StatisticsReply) == (
        StatisticsReply((record,))
    )
    assert decode_reply(encode_reply(ChangeDone()), ChangeDone) == ChangeDone()


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (errors.InvalidInputError("bad"), ErrorKind.INVALID_INPUT),
        (errors.FailedPreconditionError("mode none"), ErrorKind.FAILED_PRECONDITION),
        (errors.ModelNotFoundError("no model folder 'absent'"), ErrorKind.MODEL_NOT_FOUND),
        (errors.QueueFullError("full"), ErrorKind.QUEUE_FULL),
        (errors.NotReadyError("stopping"), ErrorKind.NOT_READY),
        (PeerUnreachableError("worker 2 of 3 did not answer"), ErrorKind.NOT_READY),
        (errors.DeadlineExceededError("late"), ErrorKind.DEADLINE_EXCEEDED),
    ],
)
def test_an_error_crosses_as_its_kind_and_message(
    error: errors.ServingError, kind: ErrorKind
) -> None:
    reply = decode_reply(encode_reply(ErrorReply.of(error)), IndexReply)
    assert reply == ErrorReply(kind, str(error))
    assert isinstance(reply, ErrorReply)
    raised = reply.error("worker process 1 of 2 failed the index request")
    assert raised.status == error.status
    assert str(raised) == str(error)


@pytest.mark.parametrize(
    "error",
    [PeerFailedError("worker 1 failed"), errors.InternalError("a bug"), errors.ServingError()],
)
def test_an_internal_failure_crosses_without_its_text(error: errors.ServingError) -> None:
    line = encode_reply(ErrorReply.of(error))
    assert line == b'{"error": "internal", "message": ""}\n'
    reply = decode_reply(line, ChangeDone)
    assert reply == ErrorReply(ErrorKind.INTERNAL)
    assert isinstance(reply, ErrorReply)
    raised = reply.error("worker process 1 of 2 failed the load request")
    assert isinstance(raised, PeerFailedError)
    assert raised.status == errors.INTERNAL  # answered with the generic message


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"op": "reboot"}\n',
        b'{"op": "load", "name": 7}\n',
        b'{"op": "statistics", "name": "m", "version": 2}\n',
        b'{"op": "load", "everywhere": "yes"}\n',
    ],
)
def test_a_request_out_of_schema_is_refused(line: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        decode_request(line)


@pytest.mark.parametrize(
    "line",
    [
        b"{}\n",
        b'{"result": 5}\n',
        b'{"result": [{"name": "m", "version": "1", "state": "ASLEEP", "reason": ""}]}\n',
        b'{"result": [{"name": "m"}]}\n',
        b'{"error": "ModelNotFoundError", "message": "x"}\n',
    ],
)
def test_a_reply_out_of_schema_is_refused(line: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        decode_reply(line, IndexReply)
