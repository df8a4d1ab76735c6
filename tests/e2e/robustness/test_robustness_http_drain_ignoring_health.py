"""SIGTERM while HTTP callers that never look at readiness keep sending single-image infers.

The HTTP twin of test_robustness_drain_ignoring_health.py: every request that reaches the
server during shutdown must be answered 200 (served) or 503 (refused, safe to retry),
never dropped after it was sent on a connection the server had accepted (a reset or an
empty reply there is HTTP's CANCELLED: the caller cannot tell whether its work was done)
and never a 500. A connection refused at connect time, or reset before the server
accepted it (it was still in the kernel's accept queue when the listener closed), never
reached the server: that is the port closing. One keep-alive connection per caller, as
HTTP/1.1 clients have.
"""

from __future__ import annotations

import collections
import http.client
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.robustness.test_robustness_http_drain import infer_body
from tests.support.server_process import start_server_process

pytestmark = pytest.mark.e2e

CALLERS = 32
DRAIN_DELAY_S = 0.5
GRACE_PERIOD_S = 10.0
LOAD_BEFORE_SIGTERM_S = 1.0
LOAD_AFTER_EXIT_S = 0.3
REQUEST_TIMEOUT_S = 10.0
ERROR_PAUSE_S = 0.005
PACED_PAUSE_S = 0.03
MAX_REQUESTS_PER_CALLER = 100_000
EXIT_TIMEOUT_S = GRACE_PERIOD_S + DRAIN_DELAY_S + 20
REFUSED_AT_CONNECT = "refused at connect"
# A new connection the kernel had queued (handshake done) when the listener closed: the
# kernel resets it, and the server never read its request. TCP gives a closing listener
# no way to refuse what is already in its accept queue, so this is the HTTP form of
# "connection refused" (gRPC reports the same event as UNAVAILABLE).
NOT_ACCEPTED = "reset before the server accepted the connection"
# A request sent on a connection the server had accepted, answered by nothing: HTTP's
# CANCELLED. Never allowed.
DROPPED_AFTER_SENDING = "dropped after sending"


# Busy callers (back to back) and paced ones: a paced caller's keep-alive connection is
# idle between requests, which is when closing it would drop the next one.
@pytest.mark.parametrize("pause_s", [0.0, PACED_PAUSE_S], ids=["back-to-back", "paced"])
def test_sigterm_under_http_load_answers_every_request_200_or_503(
    model_repository: Path, pause_s: float
) -> None:
    body, headers = infer_body()
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def record(outcome: str) -> None:
        with lock:
            outcomes[outcome] += 1

    with start_server_process(
        model_repository,
        "--drain-delay-s",
        str(DRAIN_DELAY_S),
        "--grace-period-s",
        str(GRACE_PERIOD_S),
    ) as server:
        port = server.http_port
        assert port is not None

        def caller() -> None:
            connection: http.client.HTTPConnection | None = None
            for _ in range(MAX_REQUESTS_PER_CALLER):
                if stop.is_set():
                    break
                fresh = connection is None
                if connection is None:
                    connection = http.client.HTTPConnection(
                        "127.0.0.1", port, timeout=REQUEST_TIMEOUT_S
                    )
                    try:
                        connection.connect()
                    except ConnectionRefusedError:
                        record(REFUSED_AT_CONNECT)
                        connection = None
                        time.sleep(ERROR_PAUSE_S)
                        continue
                try:
                    connection.request("POST", "/v2/models/mnist/infer", body, headers)
                    response = connection.getresponse()
                    response.read()
                except (http.client.HTTPException, OSError):
                    record(NOT_ACCEPTED if fresh else DROPPED_AFTER_SENDING)
                    connection.close()
                    connection = None
                    time.sleep(ERROR_PAUSE_S)
                    continue
                record(str(response.status))
                time.sleep(pause_s)
                if response.getheader("Connection", "").lower() == "close":
                    connection.close()
                    connection = None
                if response.status != 200:
                    time.sleep(ERROR_PAUSE_S)
            if connection is not None:
                connection.close()

        threads = [threading.Thread(target=caller, daemon=True) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        time.sleep(LOAD_BEFORE_SIGTERM_S)
        with lock:
            served_before_sigterm = outcomes["200"]
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(EXIT_TIMEOUT_S)
        time.sleep(LOAD_AFTER_EXIT_S)
        stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_S + 5)
        output = server.output()

    assert exit_code == 0, output
    assert served_before_sigterm > 0
    assert outcomes["503"] + outcomes[REFUSED_AT_CONNECT] > 0, outcomes
    assert set(outcomes) <= {"200", "503", REFUSED_AT_CONNECT, NOT_ACCEPTED}, outcomes
