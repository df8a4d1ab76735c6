"""Calls with bytes the test controls: a blocking channel with no (de)serializers.

Every fuzz case goes through `RawCaller`, which records the status of each call so that a
test can assert on it and the session can report how many cases were sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import grpc

CLASSIFY = "/mnist_serving.v1.Classifier/Classify"
CLASSIFY_STREAM = "/mnist_serving.v1.Classifier/ClassifyStream"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
UNARY_METHODS = (CLASSIFY, MODEL_INFER)
STREAM_METHODS = (CLASSIFY_STREAM, MODEL_STREAM_INFER)
# Generous: a fuzz call is answered in milliseconds; this only bounds a hung server.
FUZZ_CALL_TIMEOUT_S = 30.0

# Statuses never acceptable as an answer to client input (the table in grpc_errors.py).
FORBIDDEN = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
# Every status malformed or odd-but-valid input may get: served, refused as malformed, or
# (for random model names/versions) not found.
INPUT_OUTCOMES = frozenset(
    {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}
)


@dataclass(frozen=True)
class Reply:
    """The outcome of one call: its status, details, and the reply bytes (unary, if OK)."""

    code: grpc.StatusCode
    details: str
    payload: bytes | None = None
    stream_payloads: tuple[bytes, ...] = ()


class RawCaller:
    """Sends raw request bytes to the server's methods and counts the cases sent."""

    def __init__(self, channel: grpc.Channel) -> None:
        # No serializers: the bytes given are the bytes sent, the bytes received are returned.
        self._unary: dict[str, grpc.UnaryUnaryMultiCallable[bytes, bytes]] = {
            method: channel.unary_unary(method) for method in UNARY_METHODS
        }
        self._stream: dict[str, grpc.StreamStreamMultiCallable[bytes, bytes]] = {
            method: channel.stream_stream(method) for method in STREAM_METHODS
        }
        self.cases: Counter[str] = Counter()
        self.codes: Counter[grpc.StatusCode] = Counter()

    def unary(self, method: str, payload: bytes) -> Reply:
        self.cases[method] += 1
        try:
            response: bytes = self._unary[method](payload, timeout=FUZZ_CALL_TIMEOUT_S)
        except grpc.RpcError as error:
            return self._record(Reply(error.code(), error.details() or ""))
        return self._record(Reply(grpc.StatusCode.OK, "", response))

    def stream(self, method: str, payloads: Iterable[bytes]) -> Reply:
        self.cases[method] += 1
        received: list[bytes] = []
        try:
            for response in self._stream[method](iter(payloads), timeout=FUZZ_CALL_TIMEOUT_S):
                received.append(response)
        except grpc.RpcError as error:
            return self._record(
                Reply(error.code(), error.details() or "", stream_payloads=tuple(received))
            )
        return self._record(Reply(grpc.StatusCode.OK, "", stream_payloads=tuple(received)))

    def _record(self, reply: Reply) -> Reply:
        self.codes[reply.code] += 1
        return reply

    @property
    def total(self) -> int:
        return sum(self.cases.values())
