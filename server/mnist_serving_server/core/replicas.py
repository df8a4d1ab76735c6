"""The server's worker processes as the repository API sees them: one state, many copies.

With `--workers N` every process holds its own registry (sessions, batchers). A load or
unload received by any of them must be applied in all of them before the call returns,
and the repository index and statistics must describe the whole server, not the process
that happened to get the call. `Replicas` is what the dataplane needs for that; the
process layer implements it across processes (`peers.py`), and `SingleProcess` is the
trivial case: this process's registry is the whole server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from mnist_serving_server.core.registry import IndexEntry, ModelRegistry, ModelState

StatisticsRecord = dict[str, Any]
"""One version's statistics in Triton's shape (`triton_records.statistics_record`)."""

# Which state a merged index row shows when the workers disagree: a change in progress
# first, then "not ready everywhere".
_TRANSITIONS = (ModelState.LOADING, ModelState.UNLOADING)


class Replicas(Protocol):
    """Every worker process of this server, this one included.

    Each method raises the error kinds of `core.errors` only: a worker's own failure as
    that worker raised it, a worker that cannot be reached as a NotReadyError (UNAVAILABLE:
    the server is restarting), a worker that failed unexpectedly as an InternalError.
    """

    async def load(self, name: str) -> None:
        """(Re)load `name` in every worker; returns once all have applied it."""

    async def unload(self, name: str) -> None:
        """Unload `name` in every worker; returns once all have applied it."""

    async def poll(self) -> None:
        """Apply what changed in the repository folder, in every worker."""

    async def other_indexes(self) -> list[list[IndexEntry]]:
        """The repository index of every other worker (empty for one process)."""

    async def other_statistics(self, name: str, version: str) -> list[list[StatisticsRecord]]:
        """The statistics of every other worker for `name`/`version` ("" = all)."""


class SingleProcess:
    """Replicas of a one-process server: its own registry is the whole server."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def load(self, name: str) -> None:
        await self._registry.load(name)

    async def unload(self, name: str) -> None:
        await self._registry.unload(name)

    async def poll(self) -> None:
        await self._registry.poll()

    async def other_indexes(self) -> list[list[IndexEntry]]:
        return []

    async def other_statistics(self, name: str, version: str) -> list[list[StatisticsRecord]]:
        return []


def merge_indexes(indexes: Sequence[Sequence[IndexEntry]]) -> list[IndexEntry]:
    """One index for the whole server from every worker's (this worker's first).

    A row on which every worker agrees is shown as is. Otherwise (a worker lacks the row,
    or reports another state) the row is LOADING or UNLOADING when some worker is in that
    transition, else UNAVAILABLE, with a reason that says how many workers have it READY.
    """
    workers = len(indexes)
    rows: dict[tuple[str, str], list[IndexEntry]] = {}
    for index in indexes:
        for entry in index:
            rows.setdefault((entry.name, entry.version), []).append(entry)
    merged: list[IndexEntry] = []
    for (name, version), entries in rows.items():
        states = {entry.state for entry in entries}
        if len(entries) == workers and len(states) == 1:
            merged.append(entries[0])
            continue
        transition = next((state for state in _TRANSITIONS if state in states), None)
        ready = sum(entry.state is ModelState.READY for entry in entries)
        reasons = sorted({entry.reason for entry in entries if entry.reason})
        reason = f"READY in {ready} of {workers} worker processes"
        if reasons:
            reason += "; " + "; ".join(reasons)
        merged.append(IndexEntry(name, version, transition or ModelState.UNAVAILABLE, reason))
    return merged


def merge_statistics(workers: Sequence[Sequence[StatisticsRecord]]) -> list[StatisticsRecord]:
    """Every worker's statistics added up per (model, version), in the first one's order."""
    merged: dict[tuple[str, str], StatisticsRecord] = {}
    for records in workers:
        for record in records:
            key = (record["name"], record["version"])
            if key in merged:
                merged[key] = _add_records(merged[key], record)
            else:
                merged[key] = record
    return list(merged.values())


def _add_records(a: StatisticsRecord, b: StatisticsRecord) -> StatisticsRecord:
    """Counts and nanoseconds add up; the last inference is the later one."""
    batches: dict[int, dict[str, Any]] = {}
    for batch in [*a["batch_stats"], *b["batch_stats"]]:
        size = batch["batch_size"]
        batches[size] = _add_counters(batches[size], batch) if size in batches else batch
    return {
        "name": a["name"],
        "version": a["version"],
        "last_inference": max(a["last_inference"], b["last_inference"]),
        "inference_count": a["inference_count"] + b["inference_count"],
        "execution_count": a["execution_count"] + b["execution_count"],
        "inference_stats": _add_counters(a["inference_stats"], b["inference_stats"]),
        "batch_stats": [batches[size] for size in sorted(batches)],
    }


def _add_counters(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two records of {"key": {"count": n, "ns": t}} (or plain numbers) added key by key."""
    total: dict[str, Any] = {}
    for key, value in a.items():
        if isinstance(value, dict):
            total[key] = _add_counters(value, b[key])
        elif key == "batch_size":
            total[key] = value
        else:
            total[key] = value + b[key]
    return total
