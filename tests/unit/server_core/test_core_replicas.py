"""Merging the workers' repository indexes and statistics into the server's."""

from __future__ import annotations

from typing import Any

from mnist_serving_server.core.registry import IndexEntry, ModelState
from mnist_serving_server.core.replicas import merge_indexes, merge_statistics

READY = ModelState.READY


def entry(version: str, state: ModelState = READY, reason: str = "") -> IndexEntry:
    return IndexEntry("mnist", version, state, reason)


def test_rows_on_which_every_worker_agrees_are_shown_as_they_are() -> None:
    index = [entry("1"), IndexEntry("other", "", ModelState.UNAVAILABLE, "unloaded")]
    assert merge_indexes([index, list(index)]) == index


def test_a_row_missing_in_one_worker_is_not_ready_for_the_server() -> None:
    (row,) = merge_indexes([[entry("2")], []])
    assert row.state is ModelState.UNAVAILABLE
    assert row.reason == "READY in 1 of 2 worker processes"


def test_a_change_in_progress_somewhere_shows_as_that_change() -> None:
    (row,) = merge_indexes([[entry("2")], [entry("2", ModelState.LOADING)]])
    assert row.state is ModelState.LOADING
    (row,) = merge_indexes([[entry("2", ModelState.UNAVAILABLE, "bad file")], [entry("2")]])
    assert (row.state, row.reason) == (
        ModelState.UNAVAILABLE,
        "READY in 1 of 2 worker processes; bad file",
    )


def record(version: str, count: int, last: int, sizes: dict[int, int]) -> dict[str, Any]:
    duration = {"count": count, "ns": 10 * count}
    return {
        "name": "mnist",
        "version": version,
        "last_inference": last,
        "inference_count": count,
        "execution_count": count,
        "inference_stats": {"success": dict(duration), "queue": dict(duration)},
        "batch_stats": [
            {"batch_size": size, "compute_infer": {"count": n, "ns": 5 * n}}
            for size, n in sorted(sizes.items())
        ],
    }


def test_statistics_add_up_and_keep_the_latest_inference_time() -> None:
    (merged, other) = merge_statistics(
        [
            [record("1", 3, 100, {1: 3}), record("2", 1, 50, {1: 1})],
            [record("1", 4, 200, {1: 2, 4: 2})],
        ]
    )
    assert merged["version"] == "1"
    assert (merged["inference_count"], merged["last_inference"]) == (7, 200)
    assert merged["inference_stats"]["success"] == {"count": 7, "ns": 70}
    assert merged["batch_stats"] == [
        {"batch_size": 1, "compute_infer": {"count": 5, "ns": 25}},
        {"batch_size": 4, "compute_infer": {"count": 2, "ns": 10}},
    ]
    assert other == record("2", 1, 50, {1: 1})  # served by one worker only: its own figures
