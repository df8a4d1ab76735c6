"""Run `python -m mnist_serving_server` as a child process, the way a user or a pod does.

Used by tests/integration, tests/e2e and tests/interop. It imports no gRPC stubs on
purpose: tests/interop load tritonclient, whose protobuf messages would clash with ours.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "mnist"
READY_POLL_S = 0.05
KILL_WAIT_S = 10.0
OUTPUT_TAIL_CHARS = 4000


class ServerProcessError(RuntimeError):
    """The server process exited or did not become ready in time; carries its output."""


class ServerProcess:
    """A running server process. A context manager: leaving it always ends the process."""

    def __init__(self, process: subprocess.Popen[bytes], workdir: Path, ready: dict[str, int]):
        self.process = process
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self.grpc_port: int = ready["grpc_port"]
        self.metrics_port: int | None = ready.get("metrics_port")
        self.http_port: int | None = ready.get("http_port")
        self.pid: int = ready["pid"]

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_target(self) -> str:
        """host:port of the HTTP/REST port (tritonclient.http's `url`)."""
        return f"127.0.0.1:{self.http_port}"

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send `sig`, wait up to `timeout` s, return the exit code (kills it if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=KILL_WAIT_S)
                raise ServerProcessError(
                    f"server did not exit within {timeout} s of signal {sig}; killed.\n"
                    + self.output()[-OUTPUT_TAIL_CHARS:]
                ) from None
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=KILL_WAIT_S)


def server_command(model_repository: Path, ready_file: Path, *extra_args: str) -> list[str]:
    return [
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
        "0",
        "--http-port",
        "0",
        "--ready-file",
        str(ready_file),
        *extra_args,
    ]


def start_server_process(
    model_repository: Path,
    *extra_args: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 60,
) -> ServerProcess:
    """Start a server on 127.0.0.1 (free ports) and wait until it is warm (its ready file).

    `extra_args` come last, so they override the defaults above (e.g. "--port", "8001").
    Raises ServerProcessError, with the server's output, if it exits or is not ready in time.
    """
    workdir = Path(tempfile.mkdtemp(prefix="mnist-serving-"))
    ready_file = workdir / "ready.json"
    log = (workdir / "server.log").open("wb")
    process_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        server_command(model_repository, ready_file, *extra_args),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=process_env,
        cwd=REPO_ROOT,
    )
    log.close()  # the child holds its own descriptor
    deadline = time.monotonic() + timeout_s
    while not ready_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=KILL_WAIT_S)
            output = (workdir / "server.log").read_text(errors="replace")
            raise ServerProcessError(
                f"server exited with {process.returncode} before it was ready"
                f" (waited up to {timeout_s} s):\n{output[-OUTPUT_TAIL_CHARS:]}"
            )
        time.sleep(READY_POLL_S)
    ready = json.loads(ready_file.read_text())
    return ServerProcess(process, workdir, ready)
