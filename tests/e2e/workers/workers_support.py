"""What the --workers tests share: which processes serve which connections, /metrics."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.server_process import ServerProcess

RPC_TIMEOUT_S = 30
METRICS_TIMEOUT_S = 10
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
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
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
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def open_channels(target: str, count: int) -> list[grpc.Channel]:
    # A local subchannel pool: otherwise channels in one process share one connection.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(target, options=options) for _ in range(count)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
    return channels


def wait_gone(pids: list[int]) -> list[int]:
    """The pids still alive after a bounded wait (zombies count as gone)."""
    deadline = time.monotonic() + PROCESS_GONE_TIMEOUT_S
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _alive(pid)]
        time.sleep(POLL_S)
    return alive


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status
