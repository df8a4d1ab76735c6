"""A small real gRPC server of our own that answers the Classify API from a script.

It produces what the real server cannot be made to do on demand (UNAUTHENTICATED, a
fixed number of UNAVAILABLE failures, slow stream replies) and counts, server-side, what
the client really sent: attempts, metadata, stream requests in flight.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc

NUM_CLASSES = 10
SERVER_THREADS = 8
STOP_GRACE_S = 1.0
LOOPBACK = "127.0.0.1"


def one_hot_prediction(label: int) -> classifier_pb2.Prediction:
    probabilities = [0.0] * NUM_CLASSES
    probabilities[label] = 1.0
    return classifier_pb2.Prediction(label=label, probability=1.0, probabilities=probabilities)


def label_of(image: classifier_pb2.Image) -> int:
    """The scripted "model": the first pixel byte modulo 10, so tests can check order."""
    data = image.pixels or image.encoded
    return data[0] % NUM_CLASSES


@dataclass
class Script:
    """What the server does. Calls are numbered from 1 in arrival order."""

    # Fail call n with failures[n-1] while n <= len(failures); then answer.
    failures: list[grpc.StatusCode] = field(default_factory=list)
    # Fail every call with this code (overrides `failures`).
    always: grpc.StatusCode | None = None
    # Require `authorization: <value>` metadata; else UNAUTHENTICATED.
    required_authorization: str | None = None
    # Stream: reply to these request ids with an `error` of this code number.
    stream_error_ids: frozenset[str] = frozenset()
    stream_error_code: int = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    # Stream: wait this long before each reply, so requests pile up if the client lets them.
    stream_reply_delay_s: float = 0.0


class ScriptedClassifier(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls = 0
        self.authorizations: list[str | None] = []
        self.stream_received = 0
        self.stream_replied = 0
        self.max_stream_outstanding = 0
        self._lock = threading.Lock()

    def _check_call(self, context: grpc.ServicerContext) -> None:
        authorization = dict(context.invocation_metadata()).get("authorization")
        if not isinstance(authorization, str):
            authorization = None
        with self._lock:
            self.calls += 1
            number = self.calls
            self.authorizations.append(authorization)
        script = self.script
        required = script.required_authorization
        if required is not None and authorization != required:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        code = script.always
        if code is None and number <= len(script.failures):
            code = script.failures[number - 1]
        if code is not None:
            context.abort(code, f"scripted {code.name} on call {number}")

    def Classify(  # noqa: N802 - the gRPC method's name
        self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        self._check_call(context)
        return classifier_pb2.ClassifyResponse(
            predictions=[one_hot_prediction(label_of(image)) for image in request.images],
            request_id=request.request_id,
        )

    def ClassifyStream(  # noqa: N802 - the gRPC method's name
        self,
        request_iterator: Iterator[classifier_pb2.ClassifyRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[classifier_pb2.ClassifyResponse]:
        self._check_call(context)
        # Read requests as fast as the client sends them, so that what is outstanding
        # (received, not yet answered) measures the client's window, not our pace.
        received: queue.Queue[classifier_pb2.ClassifyRequest | None] = queue.Queue()

        def read_all() -> None:
            try:
                for request in request_iterator:
                    with self._lock:
                        self.stream_received += 1
                        outstanding = self.stream_received - self.stream_replied
                        self.max_stream_outstanding = max(self.max_stream_outstanding, outstanding)
                    received.put(request)
            except grpc.RpcError:
                pass  # the client cancelled the stream: nothing more to read
            finally:
                received.put(None)

        threading.Thread(target=read_all, daemon=True).start()
        while (request := received.get()) is not None:
            time.sleep(self.script.stream_reply_delay_s)
            with self._lock:
                self.stream_replied += 1
            if request.request_id in self.script.stream_error_ids:
                yield classifier_pb2.ClassifyResponse(
                    request_id=request.request_id,
                    error=classifier_pb2.Error(
                        code=self.script.stream_error_code, message="scripted stream error"
                    ),
                )
            else:
                yield classifier_pb2.ClassifyResponse(
                    predictions=[one_hot_prediction(label_of(image)) for image in request.images],
                    request_id=request.request_id,
                )


class ScriptedServer:
    """A running scripted server; `target` to connect, `classifier` to inspect."""

    def __init__(self, script: Script, credentials: grpc.ServerCredentials | None = None) -> None:
        self.classifier = ScriptedClassifier(script)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS))
        classifier_pb2_grpc.add_ClassifierServicer_to_server(self.classifier, self._server)
        address = f"{LOOPBACK}:0"
        if credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, credentials)
        self._server.start()

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self._server.stop(STOP_GRACE_S).wait()
