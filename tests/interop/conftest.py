"""A server subprocess for the tritonclient tests.

This pytest process loads tritonclient, whose generated `inference.*` protobuf messages
would clash with ours in protobuf's default descriptor pool: nothing here (or in the tests)
imports `mnist_serving_server` or `mnist_serving_proto.open_inference_pb2`. The server runs as
a child process (tests/server_process.py), as a user runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server_process import ServerProcess, start_server_process

# Shut down at once when the session ends (no drain for load balancers in a test).
NO_DRAIN = ("--drain-delay-s", "0")


@pytest.fixture(scope="session")
def v2_server(model_repository: Path) -> Iterator[ServerProcess]:
    """One warm server process for the whole interop session; it must exit 0 on SIGTERM."""
    with start_server_process(model_repository, *NO_DRAIN) as process:
        yield process
        exit_code = process.stop()
    assert exit_code == 0, process.output()[-2000:]
