"""How many cores this process may use: its CPU affinity, capped by its cgroup's CPU quota.

`os.cpu_count()` counts the host's cores; a container limited to 2 CPUs on a 64-core host
sees 64 there. The kernel enforces the quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`)
by throttling, so more busy threads than the quota allows only wait. Every ancestor cgroup
may set a quota; the smallest applies.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def available_cores() -> int:
    """min(CPU affinity, ceil(cgroup CPU quota)); at least 1."""
    cores = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def cgroup_cpu_quota(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The CPU quota in cores of this process's cgroup and its ancestors; None = no limit."""
    quotas = [
        quota
        for folder in _cgroup_folders(root, proc_cgroup)
        if (quota := _quota_in(folder)) is not None
    ]
    return min(quotas, default=None)


def _cgroup_folders(root: Path, proc_cgroup: Path) -> list[Path]:
    """This process's cgroup folders (v2 unified, v1 cpu controller) and their ancestors."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return [root, root / "cpu"]
    folders: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = root  # v2: "0::/path"
        elif "cpu" in controllers.split(","):
            base = root / "cpu" if (root / "cpu").is_dir() else root / controllers
        else:
            continue
        folder = base / path.lstrip("/")
        folders.extend([folder, *[p for p in folder.parents if p.is_relative_to(base)]])
    # In a container the cgroup namespace may show "/" while the files sit at the root.
    return folders or [root]


def _quota_in(folder: Path) -> float | None:
    try:
        text = (folder / "cpu.max").read_text(encoding="utf-8").split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text(encoding="utf-8"))
        period = int((folder / "cpu.cfs_period_us").read_text(encoding="utf-8"))
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None
