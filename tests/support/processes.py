"""A server's processes, read from /proc (Linux): its workers, their sockets, memory and exit."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.support.server_process import ServerProcess

BYTES_PER_KIB = 1024
BYTES_PER_MB = 1_000_000
TCP_ESTABLISHED = "01"
PROCESS_GONE_TIMEOUT_S = 10.0
POLL_S = 0.05


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's list), from /proc."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        children.update(int(child) for child in text.split())
    return sorted(children)


def worker_pids(server: ServerProcess) -> list[int]:
    """The server's worker processes (multiprocessing's resource tracker is not one)."""
    workers = []
    for child in child_pids(server.pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except FileNotFoundError:
            continue  # exited meanwhile
        if b"spawn_main" in cmdline:
            workers.append(child)
    return workers


def established_server_sockets(port: int) -> set[int]:
    """Socket inodes of established TCP connections whose local port is `port`."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == TCP_ESTABLISHED:
                    inodes.add(int(fields[9]))
    return inodes


def socket_inodes_of(pid: int) -> set[int]:
    """Inodes of the sockets `pid` holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (VmRSS in /proc/PID/status)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * BYTES_PER_KIB
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def wait_gone(pids: list[int], timeout_s: float = PROCESS_GONE_TIMEOUT_S) -> list[int]:
    """The pids still alive after a bounded wait (zombies count as gone)."""
    deadline = time.monotonic() + timeout_s
    remaining = list(pids)
    while remaining and time.monotonic() < deadline:
        remaining = [pid for pid in remaining if alive(pid)]
        time.sleep(POLL_S)
    return remaining
