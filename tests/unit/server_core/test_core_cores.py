"""The cores a process may use: affinity, capped by the cgroup CPU quota (v1 and v2)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from mnist_serving_server.core.cores import available_cores, cgroup_cpu_quota


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_quota_of_the_process_cgroup_and_its_ancestors_the_smallest_wins(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cgroup"
    write(root / "kubepods" / "pod" / "cpu.max", "150000 100000\n")
    write(root / "kubepods" / "cpu.max", "400000 100000\n")
    write(root / "cpu.max", "max 100000\n")
    proc = tmp_path / "proc_cgroup"
    write(proc, "0::/kubepods/pod\n")
    assert cgroup_cpu_quota(root, proc) == 1.5


def test_v1_cfs_quota_is_read_from_the_cpu_controller(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu" / "docker" / "abc" / "cpu.cfs_quota_us", "200000\n")
    write(root / "cpu" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc_cgroup"
    write(proc, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n")
    assert cgroup_cpu_quota(root, proc) == 2.0


def test_no_quota_anywhere_means_no_limit(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "max 100000\n")
    write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc_cgroup"
    write(proc, "1:cpu:/\n0::/\n")
    assert cgroup_cpu_quota(root, proc) is None


def test_available_cores_is_the_affinity_capped_by_this_machines_quota() -> None:
    quota = cgroup_cpu_quota()
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if quota is None else min(affinity, max(1, math.ceil(quota)))
    assert available_cores() == expected >= 1
