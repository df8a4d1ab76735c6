"""Reading CPU time from /proc for the server-CPU-per-request column."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.processes import CLOCK_TICKS, parse_stat, process_tree_cpu_seconds

BUSY_S = 0.2


def test_parse_stat_survives_odd_command_names() -> None:
    # Fields after the name: state ppid ... utime (14th field) stime (15th).
    rest = "S 42 " + " ".join(["0"] * 9) + f" {3 * CLOCK_TICKS} {CLOCK_TICKS} 0 0"
    parent, seconds = parse_stat(f"1234 (py thon) (x)) {rest}")
    assert parent == 42
    assert seconds == pytest.approx(4.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_own_cpu_time_grows_with_work() -> None:
    before = process_tree_cpu_seconds(os.getpid())
    assert before is not None
    end = time.process_time() + BUSY_S
    while time.process_time() < end:
        pass
    after = process_tree_cpu_seconds(os.getpid())
    assert after is not None
    assert after > before


def test_unknown_pid_gives_none() -> None:
    assert process_tree_cpu_seconds(2**22 + 12345) is None


BURN_S = 0.4
# Burns BURN_S of CPU, then says so and stays alive until its stdin closes.
BURN = (
    "import sys, time\n"
    f"end = time.process_time() + {BURN_S}\n"
    "while time.process_time() < end: pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)


def _child(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


def _wait_burnt(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "burnt"


def _end(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_live_grandchild_counts_in_the_tree() -> None:
    # The child only starts a grandchild that burns: the child's tree holds the burn, the
    # child itself does not.
    parent_code = (
        "import subprocess, sys\n"
        f"grandchild = subprocess.Popen([sys.executable, '-c', {BURN!r}], stdin=sys.stdin)\n"
        "grandchild.wait()\n"
    )
    child = _child(parent_code)
    try:
        _wait_burnt(child)
        tree = process_tree_cpu_seconds(child.pid)
        alone = parse_stat(Path(f"/proc/{child.pid}/stat").read_text())[1]
        assert tree is not None
        assert tree >= BURN_S * 0.9
        assert alone < BURN_S / 2
    finally:
        _end(child)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_exited_grandchild_still_counts() -> None:
    # The grandchild burns and exits; the child waits for it, so its CPU moves into the
    # child's cutime/cstime and must stay in the tree's total.
    quick_burn = BURN.replace("sys.stdin.read()\n", "")
    parent_code = (
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', {quick_burn!r}], check=True)\n"
        "sys.stdin.read()\n"
    )
    child = _child(parent_code)
    try:
        _wait_burnt(child)
        deadline = time.monotonic() + 10
        while _children(child.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # the child reaps the grandchild just after its last line
        assert _children(child.pid) == []
        tree = process_tree_cpu_seconds(child.pid)
        assert tree is not None
        assert tree >= BURN_S * 0.9
    finally:
        _end(child)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent, _ = parse_stat((entry / "stat").read_text())
            except (OSError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found
