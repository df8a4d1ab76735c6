"""Services under test as child processes: start, wait for the ready file, measure CPU, stop.

The real server (`python -m mnist_serving_server`) and the echo server both write a JSON
ready file ({"grpc_port", ..., "pid"}) once they serve; waiting for it (rather than
polling the port) means every scenario starts against a warmed-up server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

READY_POLL_S = 0.05
DEFAULT_READY_TIMEOUT_S = 120.0
# The server drains (NOT_SERVING, then a grace period) on SIGTERM; give it this long.
DEFAULT_STOP_TIMEOUT_S = 30.0
KILL_WAIT_S = 5.0
LOOPBACK = "127.0.0.1"
PROC = Path("/proc")
# /proc/<pid>/stat fields after the command name: utime, stime, cutime and cstime are
# fields 14 to 17 of the full line, i.e. indexes 11 to 14 after the ")" that closes the
# name. cutime + cstime: the CPU of the children it has waited for (a worker that exited).
STAT_UTIME_INDEX = 11
STAT_CSTIME_INDEX = 14
STAT_PPID_INDEX = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ServiceStartError(RuntimeError):
    """A service exited or did not become ready in time."""


class ServiceProcess:
    """A child process serving gRPC on 127.0.0.1; a context manager that always stops it."""

    def __init__(
        self,
        command: Sequence[str],
        *,
        log_path: Path,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.command = list(command)
        self.cwd = cwd
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.env = env
        self.ready: dict[str, Any] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._workdir = tempfile.TemporaryDirectory(prefix="bench-service-")
        self.ready_file = Path(self._workdir.name) / "ready.json"

    @property
    def grpc_port(self) -> int:
        return int(self.ready["grpc_port"])

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "service not started"
        return self.process.pid

    def start(self) -> ServiceProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [*self.command, "--ready-file", str(self.ready_file)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
        )
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.ready_file.exists():
            code = self.process.poll()
            if code is not None:
                raise ServiceStartError(
                    f"{' '.join(self.command)} exited with code {code} before it was ready; "
                    f"log: {self.log_path}\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceStartError(
                    f"{' '.join(self.command)} not ready after {self.ready_timeout_s:.0f} s; "
                    f"log: {self.log_path}\n{self.log_tail()}"
                )
            time.sleep(READY_POLL_S)
        self.ready = json.loads(self.ready_file.read_text())
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) of the service and all its descendants so far."""
        if self.process is None or self.process.poll() is not None:
            return None
        return process_tree_cpu_seconds(self.process.pid)

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code (None if it never started)."""
        if self.process is None:
            return None
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=KILL_WAIT_S)
            return self.process.returncode
        finally:
            if self._log is not None:
                self._log.close()
            self._workdir.cleanup()

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def parse_stat(stat_line: str) -> tuple[int, float]:
    """(parent pid, CPU seconds of the process and of its waited-for children) from one
    /proc/<pid>/stat line."""
    # The command name is in parentheses and may itself contain spaces or ")".
    fields = stat_line[stat_line.rindex(")") + 2 :].split()
    ticks = sum(int(field) for field in fields[STAT_UTIME_INDEX : STAT_CSTIME_INDEX + 1])
    return int(fields[STAT_PPID_INDEX]), ticks / CLOCK_TICKS


def process_tree_cpu_seconds(root_pid: int) -> float | None:
    """CPU seconds (user + system) of `root_pid` and all its descendants (Linux /proc);
    None elsewhere.

    The live processes of the tree are found by their parent pids (this kernel may lack
    /proc/<pid>/task/<tid>/children); descendants that have exited count through their
    parents' cutime + cstime. Every thread of a process is in its process's figures.
    """
    if not PROC.is_dir():
        return None
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent, seconds = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        parents[int(entry.name)] = parent
        cpu[int(entry.name)] = seconds
    if root_pid not in cpu:
        return None
    tree = {root_pid}
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(cpu[pid] for pid in tree)


def python_module_command(module: str, *args: str) -> list[str]:
    """`python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *args]
