"""A locked-down server as an operator runs it, used through `mnist-client` as a user does.

mTLS + a bearer token from the environment + /metrics on 127.0.0.1 only, all at once.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_server.grpc_api.auth import AUTH_TOKEN_ENV
from tests.integration.client.certificates import CertificateFiles, make_certificates
from tests.support.channels import open_channels
from tests.support.metrics import scrape, total
from tests.support.processes import established_server_sockets, socket_inodes_of, worker_pids
from tests.support.server_process import REPO_ROOT, ServerProcess, start_server_process

DIGITS_DIR = REPO_ROOT / "client" / "examples" / "digits"
DIGIT_FILES = sorted(DIGITS_DIR.glob("digit_*.png"))
CLI_TIMEOUT_S = 60
EXIT_OK, EXIT_SERVER_ERROR, EXIT_START_FAILED = 0, 1, 1
TOKEN_BYTES = 32
# The shipped digits are real held-out MNIST digits, one per class.
MIN_RIGHT_DIGITS = 9
OTHER_LOOPBACK_ADDRESS = "127.0.0.2"
SOCKET_TIMEOUT_S = 10
# The SDK's variable for its token (never a flag value: `ps` would show it).
CLIENT_TOKEN_ENV = "MNIST_SERVING_TOKEN"
WORKERS = 2
# With 16 connections, the chance that the kernel puts all on one of two workers is 2**-15.
CONNECTIONS = 16


@dataclass(frozen=True)
class LockedDownServer:
    process: ServerProcess
    certificates: CertificateFiles
    token: str


@pytest.fixture(scope="module")
def locked_down(
    model_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LockedDownServer]:
    certificates = make_certificates(tmp_path_factory.mktemp("certificates"))
    token = secrets.token_hex(TOKEN_BYTES)
    with start_server_process(
        model_repository,
        "--tls-cert",
        str(certificates.server_cert),
        "--tls-key",
        str(certificates.server_key),
        "--tls-client-ca",
        str(certificates.ca_cert),
        "--metrics-host",
        "127.0.0.1",
        env={AUTH_TOKEN_ENV: token},
    ) as process:
        yield LockedDownServer(process, certificates, token)


def run_cli(
    server: LockedDownServer, *args: str, token: str | None
) -> subprocess.CompletedProcess[str]:
    """`python -m mnist_serving_client` with the client certificate; the token via its variable."""
    certificates = server.certificates
    env = {key: value for key, value in os.environ.items() if key != CLIENT_TOKEN_ENV}
    if token is not None:
        env[CLIENT_TOKEN_ENV] = token
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_serving_client",
            "--target",
            server.process.target,
            "--ca-file",
            str(certificates.ca_cert),
            "--client-cert",
            str(certificates.client_cert),
            "--client-key",
            str(certificates.client_key),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        check=False,
    )


def test_the_cli_classifies_with_mtls_and_the_token(locked_down: LockedDownServer) -> None:
    result = run_cli(
        locked_down, "classify", "--json", *map(str, DIGIT_FILES), token=locked_down.token
    )
    assert result.returncode == EXIT_OK, result.stderr
    labels = [row["label"] for row in json.loads(result.stdout)]
    assert sum(label == digit for digit, label in enumerate(labels)) >= MIN_RIGHT_DIGITS


def test_the_cli_without_the_right_token_is_refused(locked_down: LockedDownServer) -> None:
    for token in (None, secrets.token_hex(TOKEN_BYTES)):
        result = run_cli(locked_down, "classify", str(DIGIT_FILES[0]), token=token)
        assert result.returncode == EXIT_SERVER_ERROR
        assert "authentication required" in result.stderr
        assert result.stdout == ""


def test_health_answers_without_a_token(locked_down: LockedDownServer) -> None:
    """Probes and load balancers check health without credentials (health is exempt)."""
    result = run_cli(locked_down, "health", token=None)
    assert result.returncode == EXIT_OK, result.stderr


def test_the_token_is_never_on_the_command_line_or_in_the_log(
    locked_down: LockedDownServer,
) -> None:
    run_cli(locked_down, "classify", str(DIGIT_FILES[0]), token="wrong-" + "0" * TOKEN_BYTES)
    command_line = Path(f"/proc/{locked_down.process.pid}/cmdline").read_bytes()
    assert b"--tls-client-ca" in command_line  # the right process
    assert locked_down.token.encode() not in command_line
    output = locked_down.process.output()
    assert "serving" in output
    assert locked_down.token not in output
    assert "wrong-" not in output  # nor a caller's attempt


def test_metrics_answer_on_localhost_only(locked_down: LockedDownServer) -> None:
    port = locked_down.process.metrics_port
    assert port is not None
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=SOCKET_TIMEOUT_S
    ) as response:
        assert b"mnist_serving_requests_total" in response.read()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((OTHER_LOOPBACK_ADDRESS, port), timeout=SOCKET_TIMEOUT_S)


def test_an_empty_token_file_stops_the_start(model_repository: Path, tmp_path: Path) -> None:
    """Fail closed: a token file without a token must not start an open server."""
    empty = tmp_path / "tokens"
    empty.write_text("# no token yet\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mnist_serving_server",
            "--model-repository",
            str(model_repository),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--http-port",
            "-1",
            "--auth-token-file",
            str(empty),
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == EXIT_START_FAILED
    assert "holds no token" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_inherit_the_auth_settings(model_repository: Path, tmp_path: Path) -> None:
    """--workers N: every worker enforces the token; the parent's /metrics sums the refusals.

    Connections land on workers by the kernel's hash: the test opens CONNECTIONS of them,
    proves from /proc that each worker holds some, then calls on every one with and without
    the token, so each worker both serves and refuses.
    """
    token = secrets.token_hex(TOKEN_BYTES)
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{token}\n")
    with start_server_process(
        model_repository,
        "--workers",
        str(WORKERS),
        "--auth-token-file",
        str(token_file),
        "--metrics-host",
        "127.0.0.1",
    ) as server:
        channels = open_channels(server.target, CONNECTIONS)
        try:
            established = established_server_sockets(server.grpc_port)
            workers = worker_pids(server)
            per_worker = [len(socket_inodes_of(pid) & established) for pid in workers]
            assert len(workers) == WORKERS, workers
            assert sum(per_worker) == CONNECTIONS, per_worker
            assert all(count > 0 for count in per_worker), per_worker
            statuses = [_classify_status(channel, token) for channel in channels]
            statuses += [_classify_status(channel, None) for channel in channels]
        finally:
            for channel in channels:
                channel.close()
        assert statuses == ["OK"] * CONNECTIONS + ["UNAUTHENTICATED"] * CONNECTIONS
        samples = scrape(server.metrics_port)
        refused = total(
            samples, "mnist_serving_requests_total", code="UNAUTHENTICATED", method="Classify"
        )
        assert refused == CONNECTIONS
        assert server.stop() == EXIT_OK


def _classify_status(channel: grpc.Channel, token: str | None) -> str:
    """One Classify on `channel`: "OK" or the status code's name."""
    request = classifier_pb2.ClassifyRequest(
        images=[classifier_pb2.Image(pixels=np.zeros(28 * 28, dtype=np.uint8).tobytes())]
    )
    metadata = None if token is None else (("authorization", f"Bearer {token}"),)
    try:
        classifier_pb2_grpc.ClassifierStub(channel).Classify(
            request, metadata=metadata, timeout=CLI_TIMEOUT_S
        )
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"
