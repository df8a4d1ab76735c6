"""Two workers' PeerLinks in one event loop, over real Unix sockets and real registries:
changes reach both (in the leader's order), reads add up, errors keep their kind, and an
unreachable sibling makes the call UNAVAILABLE instead of hanging it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from mnist_serving_server.core.dataplane import DataPlane, ModelControlMode
from mnist_serving_server.core.errors import ModelNotFoundError, NotReadyError
from mnist_serving_server.core.registry import ModelRegistry, ModelState, RegistryOptions
from mnist_serving_server.peers import PeerLink, WorkerGroup
from tests.registry_options import small_registry_options
from tests.repository_models import write_regressor

REGRESSOR = "regressor"
WORKERS = 2
CALL_TIMEOUT_S = 30.0
UNREACHABLE_TIMEOUT_S = 0.5


def options() -> RegistryOptions:
    return small_registry_options(default_model=REGRESSOR, max_batch_size=8)


def group(tmp_path: Path, index: int, timeout_s: float = CALL_TIMEOUT_S) -> WorkerGroup:
    sockets = tuple(tmp_path / f"worker-{peer}.sock" for peer in range(WORKERS))
    return WorkerGroup(index=index, sockets=sockets, call_timeout_s=timeout_s)


@pytest.fixture
async def planes(tmp_path: Path) -> AsyncIterator[list[DataPlane]]:
    """Worker 0 (the leader) and worker 1, each with its own registry of one repository."""
    repository = tmp_path / "repository"
    write_regressor(repository)
    planes, links = [], []
    for index in range(WORKERS):
        registry = ModelRegistry(repository, options())
        await registry.load_all()
        link = PeerLink(group(tmp_path, index), registry)
        await link.start()
        plane = DataPlane(registry, control_mode=ModelControlMode.EXPLICIT, replicas=link)
        plane.set_ready(True)
        planes.append(plane)
        links.append(link)
    yield planes
    for plane, link in zip(planes, links, strict=True):
        await plane.registry.stop()
        await link.close()


def served_versions(plane: DataPlane) -> list[str]:
    return [served.version for served in plane.registry.served_versions(REGRESSOR)]


@pytest.mark.parametrize("via", [0, 1], ids=["leader", "follower"])
async def test_a_change_through_either_worker_is_applied_in_both(
    planes: list[DataPlane], via: int
) -> None:
    repository = planes[0].registry.repository
    write_regressor(repository, version=2)
    await planes[via].load(REGRESSOR)
    assert [served_versions(plane) for plane in planes] == [["2"], ["2"]]
    await planes[via].unload(REGRESSOR)
    assert [plane.registry.any_ready for plane in planes] == [False, False]
    index = await planes[1 - via].index()
    assert [(e.name, e.state) for e in index] == [(REGRESSOR, ModelState.UNAVAILABLE)]


async def test_a_peer_error_keeps_its_kind_and_message(planes: list[DataPlane]) -> None:
    with pytest.raises(ModelNotFoundError, match="no model folder 'absent'"):
        await planes[1].load("absent")


async def test_statistics_and_index_describe_both_workers(planes: list[DataPlane]) -> None:
    rows = np.ones((3, 4), dtype=np.float32)
    for plane in planes:
        await plane.infer(plane.model(REGRESSOR, ""), rows, deadline=None)
    (record,) = await planes[0].statistics(REGRESSOR, "")
    assert record["inference_count"] == WORKERS * len(rows)
    assert record["inference_stats"]["success"]["count"] == WORKERS
    assert [(e.name, e.version, e.state) for e in await planes[1].index()] == [
        (REGRESSOR, "1", ModelState.READY)
    ]
    # A version only one worker serves is not READY for the server.
    await planes[1].registry.unload(REGRESSOR)
    (row, *_) = await planes[0].index()
    assert (row.version, row.state) == ("1", ModelState.UNAVAILABLE)
    assert "READY in 1 of 2 worker processes" in row.reason


async def test_an_unreachable_sibling_makes_the_change_unavailable(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    write_regressor(repository)
    registry = ModelRegistry(repository, options())
    await registry.load_all()
    link = PeerLink(group(tmp_path, 0, UNREACHABLE_TIMEOUT_S), registry)  # worker 1 never starts
    await link.start()
    try:
        with pytest.raises(NotReadyError, match="worker process 1 of 2 did not answer"):
            await link.load(REGRESSOR)
    finally:
        await registry.stop()
        await link.close()
