"""SIGTERM with HTTP clients: readiness turns 503 during the drain delay while inference is
still served; then new requests are refused (503 + Connection: close, or the connection is
closed) and the process exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.server_process import start_server_process

pytestmark = pytest.mark.e2e

DRAIN_DELAY_S = 2.0
EXIT_TIMEOUT_S = 40.0
REQUEST_TIMEOUT_S = 10.0
POLL_S = 0.05


def infer_body() -> tuple[bytes, dict[str, str]]:
    data = np.zeros(784, dtype=np.uint8).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "pixels",
                    "datatype": "UINT8",
                    "shape": [1, 1, 28, 28],
                    "parameters": {"binary_data_size": len(data)},
                }
            ]
        }
    ).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def test_sigterm_readiness_503_then_refusal_then_exit_zero(model_repository: Path) -> None:
    body, headers = infer_body()
    with start_server_process(
        model_repository, "--drain-delay-s", str(DRAIN_DELAY_S), "--grace-period-s", "10"
    ) as server:
        assert server.http_port is not None
        connection = http.client.HTTPConnection(
            "127.0.0.1", server.http_port, timeout=REQUEST_TIMEOUT_S
        )

        def send(
            method: str, path: str, payload: bytes | None = None
        ) -> tuple[int, dict[str, str]]:
            connection.request(method, path, body=payload, headers=headers if payload else {})
            response = connection.getresponse()
            response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}

        assert send("GET", "/v2/health/ready")[0] == 200
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ready_status = 200
        while ready_status == 200 and time.monotonic() - signalled < DRAIN_DELAY_S / 2:
            ready_status, _ = send("GET", "/v2/health/ready")
            time.sleep(POLL_S)
        assert ready_status == 503
        assert time.monotonic() - signalled < DRAIN_DELAY_S
        assert send("POST", "/v2/models/mnist/infer", body)[0] == 200  # still served
        refused: tuple[int, dict[str, str]] | None = None
        while time.monotonic() - signalled < DRAIN_DELAY_S + 5:
            try:
                status, answer_headers = send("POST", "/v2/models/mnist/infer", body)
            except (ConnectionError, http.client.HTTPException, OSError):
                refused = (0, {})
                break
            if status != 200:
                refused = (status, answer_headers)
                break
            time.sleep(POLL_S)
        connection.close()
        assert refused is not None, "requests were still served after the drain delay"
        status, answer_headers = refused
        # Either our 503 + Connection: close, or the connection already closed by the server.
        assert status in (0, 503)
        if status == 503:
            assert answer_headers["connection"] == "close"
        exit_code = server.process.wait(EXIT_TIMEOUT_S)
        assert exit_code == 0, server.output()[-2000:]
