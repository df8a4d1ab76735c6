"""ModelRegistry over real repositories of small real ONNX models (ONNX Runtime sessions,
real batchers): the default model, loading with failures, reloads that keep or swap
versions, unload, the index, polling, and the contract checked at load."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mnist_serving_server.core.errors import (
    FailedPreconditionError,
    ModelLoadError,
    ModelNotFoundError,
    NotReadyError,
)
from mnist_serving_server.core.graph_checks import check_contract
from mnist_serving_server.core.model_config import ModelConfig, TensorConfig
from mnist_serving_server.core.registry import (
    IndexEntry,
    ModelRegistry,
    ModelState,
    RegistryOptions,
    ServedVersion,
)
from mnist_serving_server.core.runtime import ModelInfo, ModelRuntime
from tests.registry_options import small_registry_options
from tests.repository_models import (
    MODEL_FILE,
    write_broken,
    write_regressor,
)
from tests.requirements_support import requirement_missing

REGRESSOR = "regressor"


def options(default_model: str | None = None) -> RegistryOptions:
    return small_registry_options(default_model=default_model)


StateEvent = tuple[str, str, ModelState]
MakeRegistry = Callable[..., ModelRegistry]


@pytest.fixture
async def make_registry() -> AsyncIterator[MakeRegistry]:
    """ModelRegistry factory; every registry made is stopped when the test ends."""
    made: list[ModelRegistry] = []

    def make(
        repository: Path,
        *,
        default_model: str | None = None,
        events: list[StateEvent] | None = None,
    ) -> ModelRegistry:
        def on_state(name: str, version: str, state: ModelState, info: ModelInfo | None) -> None:
            if events is not None:
                events.append((name, version, state))

        registry = ModelRegistry(repository, options(default_model), on_state=on_state)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.stop()


def replace_file(path: Path) -> None:
    """A new file with the same bytes renamed over `path` (a rolled-out model file)."""
    fresh = path.with_name(path.name + ".new")
    shutil.copyfile(path, fresh)
    os.replace(fresh, path)


def write_fixed_batch(repository: Path, name: str, version: int = 1) -> Path:
    """A graph whose batch dimension is fixed at 1: the batcher cannot serve it."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "fixed", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / MODEL_FILE))
    return folder / MODEL_FILE


async def doubled(registry: ModelRegistry, name: str = REGRESSOR, version: str = "") -> str:
    """Run one request through the resolved version's batcher; the version that answered."""
    served = registry.resolve(name, version)
    values = np.arange(8, dtype=np.float32).reshape(2, 4)
    outputs = await served.batcher.submit(values)
    np.testing.assert_array_equal(outputs["doubled"], values * 2)
    return served.version


def is_ready(served: ServedVersion) -> bool:
    """`served.ready`, read through a call (it changes under the test's feet)."""
    return served.ready


def entries(registry: ModelRegistry, name: str) -> list[IndexEntry]:
    return [entry for entry in registry.index() if entry.name == name]


# --- the default model -------------------------------------------------------------------


def test_mnist_is_the_default_when_present(tmp_path: Path, make_registry: MakeRegistry) -> None:
    write_regressor(tmp_path, "mnist")
    write_regressor(tmp_path, "other")
    registry = make_registry(tmp_path)
    assert registry.resolve_default_model() == "mnist"
    assert registry.default_model == "mnist"


def test_the_only_model_is_the_default(tmp_path: Path, make_registry: MakeRegistry) -> None:
    write_regressor(tmp_path, "only")
    (tmp_path / ".staging").mkdir()  # hidden folders are not models
    assert make_registry(tmp_path).resolve_default_model() == "only"


def test_several_models_without_mnist_is_an_error_at_start(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path, "alpha")
    write_regressor(tmp_path, "beta")
    with pytest.raises(ModelLoadError) as raised:
        make_registry(tmp_path).resolve_default_model()
    assert "alpha, beta" in str(raised.value)
    assert "--default-model" in str(raised.value)
    assert make_registry(tmp_path, default_model="beta").resolve_default_model() == "beta"


def test_an_explicit_default_must_exist(tmp_path: Path, make_registry: MakeRegistry) -> None:
    write_regressor(tmp_path, "alpha")
    with pytest.raises(ModelLoadError, match="default model 'gamma' is not in the repository"):
        make_registry(tmp_path, default_model="gamma").resolve_default_model()


def test_an_empty_repository_is_an_error(tmp_path: Path, make_registry: MakeRegistry) -> None:
    with pytest.raises(ModelLoadError, match="no models in the repository"):
        make_registry(tmp_path / "missing").resolve_default_model()


async def test_an_empty_name_resolves_to_the_default_models_latest_version(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path, "alpha")
    write_regressor(tmp_path, "beta")
    (tmp_path / "beta" / "config.pbtxt").write_text("version_policy: { all: { } }")
    write_regressor(tmp_path, "beta", version=2)
    registry = make_registry(tmp_path, default_model="beta")
    await registry.load_all()
    served = registry.resolve("", "")
    assert (served.name, served.version) == ("beta", "2")
    assert registry.resolve("", "1").version == "1"
    assert [s.version for s in registry.served_versions("beta")] == ["1", "2"]


# --- loading -------------------------------------------------------------------------------


async def test_load_all_reports_a_broken_model_and_serves_the_others(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path)
    write_broken(tmp_path, "broken")
    registry = make_registry(tmp_path, default_model=REGRESSOR)
    await registry.load_all()
    assert await doubled(registry) == "1"
    assert registry.any_ready
    (broken,) = entries(registry, "broken")
    assert broken.state is ModelState.UNAVAILABLE
    assert "cannot load ONNX model" in broken.reason
    with pytest.raises(ModelNotFoundError, match="'broken' is not loaded"):
        registry.resolve("broken", "")
    assert registry.index(ready_only=True) == [IndexEntry(REGRESSOR, "1", ModelState.READY, "")]


async def test_load_all_reports_a_bad_config_and_serves_the_others(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path)
    write_regressor(tmp_path, "badconfig")
    (tmp_path / "badconfig" / "config.pbtxt").write_text("max_batch_size: [oops")
    registry = make_registry(tmp_path, default_model=REGRESSOR)
    await registry.load_all()
    assert await doubled(registry) == "1"
    (bad,) = entries(registry, "badconfig")
    assert bad.state is ModelState.UNAVAILABLE
    assert "not a valid Triton model configuration" in bad.reason


async def test_a_policy_that_selects_no_version_fails_the_load_with_its_reason(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path)
    (tmp_path / REGRESSOR / "config.pbtxt").write_text(
        "version_policy: { specific: { versions: [ 5 ] } }"
    )
    registry = make_registry(tmp_path)
    with pytest.raises(FailedPreconditionError, match="no version of 'regressor' to serve"):
        await registry.load(REGRESSOR)
    (entry,) = entries(registry, REGRESSOR)
    assert entry.state is ModelState.UNAVAILABLE
    assert "specific [5]" in entry.reason


async def test_load_all_fails_when_no_model_loads(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_broken(tmp_path, "broken")
    write_fixed_batch(tmp_path, "fixed")
    registry = make_registry(tmp_path, default_model="broken")
    with pytest.raises(ModelLoadError) as raised:
        await registry.load_all()
    assert "no model could be loaded" in str(raised.value)
    assert "cannot load ONNX model" in str(raised.value)
    assert "dynamic batch dimension" in str(raised.value)
    assert not registry.any_ready


async def test_reload_keeps_an_unchanged_version_and_swaps_a_changed_one(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    path = write_regressor(tmp_path)
    events: list[StateEvent] = []
    registry = make_registry(tmp_path, events=events)
    await registry.load(REGRESSOR)
    first = registry.resolve(REGRESSOR, "")
    loads = [e for e in events if e[2] is ModelState.LOADING]

    await registry.load(REGRESSOR)  # nothing changed: no new session
    assert registry.resolve(REGRESSOR, "") is first
    assert first.ready
    assert [e for e in events if e[2] is ModelState.LOADING] == loads

    replace_file(path)  # a rolled-out file: same version, new contents on disk
    await registry.load(REGRESSOR)
    second = registry.resolve(REGRESSOR, "")
    assert second is not first
    assert second.ready
    assert not is_ready(first)  # the old batcher is stopped once it has drained
    with pytest.raises(NotReadyError):
        await first.batcher.submit(np.zeros((1, 4), dtype=np.float32))
    assert await doubled(registry) == "1"
    assert events[-4:] == [
        (REGRESSOR, "1", ModelState.LOADING),
        (REGRESSOR, "1", ModelState.READY),
        (REGRESSOR, "1", ModelState.UNLOADING),
        (REGRESSOR, "1", ModelState.UNAVAILABLE),
    ]


async def test_a_changed_config_swaps_the_version(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path)
    registry = make_registry(tmp_path)
    await registry.load(REGRESSOR)
    first = registry.resolve(REGRESSOR, "")
    assert first.batcher.max_batch_size == 4
    (tmp_path / REGRESSOR / "config.pbtxt").write_text("max_batch_size: 2")
    await registry.load(REGRESSOR)
    second = registry.resolve(REGRESSOR, "")
    assert second is not first
    assert second.batcher.max_batch_size == 2
    assert registry.model_config(REGRESSOR).max_batch_size == 2


async def test_concurrent_loads_of_one_model_are_serialised(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    path = write_regressor(tmp_path)
    events: list[StateEvent] = []
    registry = make_registry(tmp_path, events=events)
    await registry.load(REGRESSOR)
    replace_file(path)
    events.clear()
    await asyncio.gather(*(registry.load(REGRESSOR) for _ in range(3)))
    # One load saw the new file and loaded it; the others found it already served.
    assert [e for e in events if e[2] is ModelState.LOADING] == [
        (REGRESSOR, "1", ModelState.LOADING)
    ]
    assert len(registry.served_versions(REGRESSOR)) == 1
    assert await doubled(registry) == "1"


async def test_a_failed_load_keeps_the_old_version_serving(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path)
    registry = make_registry(tmp_path)
    await registry.load(REGRESSOR)
    old = registry.resolve(REGRESSOR, "")
    write_broken(tmp_path, REGRESSOR, version=2)
    with pytest.raises(FailedPreconditionError) as raised:
        await registry.load(REGRESSOR)
    assert "versions already served keep serving" in str(raised.value)
    assert registry.resolve(REGRESSOR, "") is old
    assert await doubled(registry) == "1"
    index = {(e.version, e.state): e.reason for e in entries(registry, REGRESSOR)}
    assert index[("1", ModelState.READY)] == ""
    assert "cannot load ONNX model" in index[("2", ModelState.UNAVAILABLE)]

    write_regressor(tmp_path, version=2)  # fixed: the next load serves it
    await registry.load(REGRESSOR)
    assert await doubled(registry) == "2"
    assert not old.ready
    with pytest.raises(ModelNotFoundError, match=r"version '1' .* versions served: 2"):
        registry.resolve(REGRESSOR, "1")
    assert entries(registry, REGRESSOR) == [IndexEntry(REGRESSOR, "2", ModelState.READY, "")]


async def test_unload_then_load(tmp_path: Path, make_registry: MakeRegistry) -> None:
    write_regressor(tmp_path)
    write_regressor(tmp_path, "other")
    registry = make_registry(tmp_path, default_model=REGRESSOR)
    await registry.load_all()
    served = registry.resolve(REGRESSOR, "")
    await registry.unload(REGRESSOR)
    assert not served.ready
    with pytest.raises(ModelNotFoundError, match=r"'regressor' is not loaded \(unloaded\)"):
        registry.resolve(REGRESSOR, "")
    with pytest.raises(ModelNotFoundError):
        registry.served_versions(REGRESSOR)
    with pytest.raises(ModelNotFoundError):
        registry.model_config(REGRESSOR)
    assert entries(registry, REGRESSOR) == [
        IndexEntry(REGRESSOR, "", ModelState.UNAVAILABLE, "unloaded")
    ]
    assert await doubled(registry, "other") == "1"  # the other model is untouched
    await registry.unload(REGRESSOR)  # unloading twice is harmless
    await registry.load(REGRESSOR)
    assert await doubled(registry) == "1"


async def test_unknown_names_are_not_found(tmp_path: Path, make_registry: MakeRegistry) -> None:
    write_regressor(tmp_path)
    (tmp_path / ".hidden").mkdir()
    write_regressor(tmp_path, "present")
    registry = make_registry(tmp_path, default_model=REGRESSOR)
    await registry.load(REGRESSOR)
    for name in ("absent", ".hidden", "7", ""):
        with pytest.raises(ModelNotFoundError):
            await registry.load(name)
    with pytest.raises(ModelNotFoundError, match="'absent' is not in the repository"):
        await registry.unload("absent")
    await registry.unload("present")  # in the folder but never loaded: nothing to do
    with pytest.raises(ModelNotFoundError, match="models served: regressor"):
        registry.resolve("absent", "")
    with pytest.raises(ModelNotFoundError, match="'present' is not loaded"):
        registry.resolve("present", "")


async def test_index_lists_every_model_folder_with_its_state(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path)
    write_regressor(tmp_path, "idle")
    (tmp_path / "badconfig" / "1").mkdir(parents=True)
    write_regressor(tmp_path, "badconfig")
    (tmp_path / "badconfig" / "config.pbtxt").write_text('name: "elsewhere"')
    registry = make_registry(tmp_path, default_model=REGRESSOR)
    await registry.load(REGRESSOR)
    with pytest.raises(FailedPreconditionError, match="does not match its folder"):
        await registry.load("badconfig")
    index = registry.index()
    assert [(e.name, e.version, e.state) for e in index] == [
        ("badconfig", "", ModelState.UNAVAILABLE),
        ("idle", "", ModelState.UNAVAILABLE),
        (REGRESSOR, "1", ModelState.READY),
    ]
    reasons = {e.name: e.reason for e in index}
    assert "does not match its folder" in reasons["badconfig"]
    assert reasons["idle"] == "unloaded"
    assert registry.index(ready_only=True) == [IndexEntry(REGRESSOR, "1", ModelState.READY, "")]


# --- polling -------------------------------------------------------------------------------


async def test_poll_serves_a_renamed_version_and_ignores_staging_folders(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path)
    write_regressor(tmp_path, "removed")
    registry = make_registry(tmp_path, default_model=REGRESSOR)
    await registry.load_all()
    first = registry.resolve(REGRESSOR, "")

    await registry.poll()  # nothing changed: nothing reloaded
    assert registry.resolve(REGRESSOR, "") is first

    write_regressor(tmp_path, REGRESSOR, version=3)
    staged = tmp_path / REGRESSOR / "3"
    staged.rename(tmp_path / REGRESSOR / ".staging-3")
    await registry.poll()
    assert await doubled(registry) == "1"  # a staging folder is not a version

    (tmp_path / REGRESSOR / ".staging-3").rename(staged)
    write_regressor(tmp_path, "added")
    shutil.rmtree(tmp_path / "removed")
    removed = registry.resolve("removed", "")
    await registry.poll()
    assert await doubled(registry) == "3"
    assert not first.ready
    assert await doubled(registry, "added") == "1"
    assert not removed.ready
    with pytest.raises(ModelNotFoundError):
        registry.resolve("removed", "")
    assert registry.index(ready_only=True) == [
        IndexEntry("added", "1", ModelState.READY, ""),
        IndexEntry(REGRESSOR, "3", ModelState.READY, ""),
    ]


# --- the contract checked at load ----------------------------------------------------------


async def test_a_model_without_a_dynamic_batch_dimension_is_refused(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    path = write_fixed_batch(tmp_path, "fixed")
    write_regressor(tmp_path)
    registry = make_registry(tmp_path, default_model=REGRESSOR)
    await registry.load_all()
    (fixed,) = entries(registry, "fixed")
    assert fixed.state is ModelState.UNAVAILABLE
    assert "first dimension must be a dynamic batch dimension" in fixed.reason
    assert "[1, 4]" in fixed.reason

    runtime = ModelRuntime.load(path, name="fixed", version="1", provider="cpu")
    config = ModelConfig(name="fixed", max_batch_size=4, max_queue_delay_s=0.0)
    with pytest.raises(ModelLoadError, match="'x' has shape \\[1, 4\\]"):
        check_contract(runtime.info, config)


def test_declared_tensors_are_checked_against_the_graph(tmp_path: Path) -> None:
    path = write_regressor(tmp_path)
    info = ModelRuntime.load(path, name=REGRESSOR, version="1", provider="cpu").info

    def config(inputs: tuple[TensorConfig, ...]) -> ModelConfig:
        return ModelConfig(REGRESSOR, max_batch_size=4, max_queue_delay_s=0.0, inputs=inputs)

    check_contract(info, config((TensorConfig("features", "FP32", (4,)),)))
    check_contract(info, config((TensorConfig("features", "FP32", (-1,)),)))
    with pytest.raises(ModelLoadError, match="declares input 'pixels', which the graph does"):
        check_contract(info, config((TensorConfig("pixels", "FP32", (4,)),)))
    with pytest.raises(ModelLoadError, match=r"declared UINT8 \[4\] but the graph has FP32 \[4\]"):
        check_contract(info, config((TensorConfig("features", "UINT8", (4,)),)))
    with pytest.raises(ModelLoadError, match=r"declared FP32 \[5\]"):
        check_contract(info, config((TensorConfig("features", "FP32", (5,)),)))
    with pytest.raises(ModelLoadError, match=r"declared FP32 \[1, 4\]"):
        check_contract(info, config((TensorConfig("features", "FP32", (1, 4)),)))


def test_a_config_declaring_a_wrong_output_is_refused_at_load(tmp_path: Path) -> None:
    path = write_regressor(tmp_path)
    info = ModelRuntime.load(path, name=REGRESSOR, version="1", provider="cpu").info
    wrong = ModelConfig(
        REGRESSOR,
        max_batch_size=4,
        max_queue_delay_s=0.0,
        outputs=(TensorConfig("probabilities", "FP32", (10,)),),
    )
    with pytest.raises(ModelLoadError, match="declares output 'probabilities'"):
        check_contract(info, wrong)


async def test_a_declared_input_that_does_not_match_fails_the_load(
    tmp_path: Path, make_registry: MakeRegistry
) -> None:
    write_regressor(tmp_path)
    (tmp_path / REGRESSOR / "config.pbtxt").write_text(
        'input [ { name: "features" data_type: TYPE_FP32 dims: [ 3 ] } ]'
    )
    registry = make_registry(tmp_path)
    with pytest.raises(FailedPreconditionError, match=r"declared FP32 \[3\]"):
        await registry.load(REGRESSOR)
    (tmp_path / REGRESSOR / "config.pbtxt").write_text(
        'input [ { name: "features" data_type: TYPE_FP32 dims: [ 4 ] } ]'
    )
    await registry.load(REGRESSOR)
    assert await doubled(registry) == "1"


# --- model files changing under the server -----------------------------------------------

LOAD_TIMEOUT_S = 0.5
TMPFS_BYTES = 256 * 1024


def options_with(**changes: object) -> RegistryOptions:
    return dataclasses.replace(options(), **changes)  # type: ignore[arg-type]


def during_load_of(
    monkeypatch: pytest.MonkeyPatch, version: str, change: Callable[[Path], object]
) -> None:
    """Make `change(model file)` happen inside the load of `version`, before ORT reads it."""
    real_load = ModelRuntime.load

    def load(path: Path, **kwargs: Any) -> ModelRuntime:
        if kwargs["version"] == version:
            change(path)
        return real_load(path, **kwargs)

    monkeypatch.setattr(ModelRuntime, "load", load)


def delete_folder(path: Path) -> None:
    shutil.rmtree(path.parent)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corrupt(path: Path) -> None:
    """Replaced (renamed over) by a file that is not ONNX."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_bytes(b"\x00not an onnx model\xff" * 64)
    os.replace(fresh, path)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (delete_folder, "model file not found"),
        (truncate, "cannot load ONNX model"),
        (corrupt, "cannot load ONNX model"),
    ],
    ids=["folder-deleted", "file-truncated", "file-replaced-by-garbage"],
)
async def test_a_version_changing_during_its_load_fails_it_and_the_old_one_serves(
    tmp_path: Path,
    make_registry: MakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[Path], None],
    reason: str,
) -> None:
    write_regressor(tmp_path)
    registry = make_registry(tmp_path)
    await registry.load(REGRESSOR)
    old = registry.resolve(REGRESSOR, "")
    write_regressor(tmp_path, version=2)
    during_load_of(monkeypatch, "2", change)
    with pytest.raises(FailedPreconditionError, match="keep serving"):
        await registry.load(REGRESSOR)
    assert registry.resolve(REGRESSOR, "") is old
    assert await doubled(registry) == "1"
    index = {(e.version, e.state): e.reason for e in entries(registry, REGRESSOR)}
    assert index[("1", ModelState.READY)] == ""
    assert reason in index[("2", ModelState.UNAVAILABLE)]


async def test_a_hanging_session_creation_times_out_and_the_old_version_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_regressor(tmp_path)
    registry = ModelRegistry(tmp_path, options_with(load_timeout_s=LOAD_TIMEOUT_S))
    await registry.load(REGRESSOR)
    old = registry.resolve(REGRESSOR, "")
    write_regressor(tmp_path, version=2)
    unblock = threading.Event()
    during_load_of(monkeypatch, "2", lambda _path: unblock.wait())
    try:
        started = time.monotonic()
        with pytest.raises(FailedPreconditionError, match="keep serving") as raised:
            await registry.load(REGRESSOR)
        assert time.monotonic() - started < LOAD_TIMEOUT_S + 2.0
        assert f"did not finish within {LOAD_TIMEOUT_S:g} s" in str(raised.value)
        assert registry.resolve(REGRESSOR, "") is old
        assert await doubled(registry) == "1"
        index = {(e.version, e.state): e.reason for e in entries(registry, REGRESSOR)}
        assert "did not finish within" in index[("2", ModelState.UNAVAILABLE)]
        # The lock is free again: the next load (the hang is over) serves version 2.
        unblock.set()
        monkeypatch.undo()
        await registry.load(REGRESSOR)
        assert await doubled(registry) == "2"
    finally:
        unblock.set()
        await registry.stop()


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A tiny tmpfs (needs root: mount), for a repository on a disk that fills up."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        error = mounted.stderr.decode().strip()
        requirement_missing("a tmpfs mount", f"needs root (make test runs as root): {error}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the disk is full; returns it."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out, contextlib.suppress(OSError):
        for _ in range(TMPFS_BYTES // 4096 + 1):
            out.write(b"\0" * 4096)
    return filler


async def test_a_copy_cut_short_by_a_full_disk_fails_its_load_and_the_old_version_serves(
    full_disk: Path, make_registry: MakeRegistry, tmp_path: Path
) -> None:
    source = write_regressor(tmp_path / "source", version=2)
    write_regressor(full_disk)
    filler = fill(full_disk)
    registry = make_registry(full_disk)
    await registry.load(REGRESSOR)  # loading needs no free space
    target = full_disk / REGRESSOR / "2" / MODEL_FILE
    target.parent.mkdir()
    with pytest.raises(OSError, match="No space left"):
        shutil.copyfile(source, target)  # what a deploy step sees: a short file is left
    with pytest.raises(FailedPreconditionError, match="keep serving"):
        await registry.load(REGRESSOR)
    assert await doubled(registry) == "1"
    filler.unlink()  # space again: the copy is redone and the next load serves it
    shutil.copyfile(source, target)
    await registry.load(REGRESSOR)
    assert await doubled(registry) == "2"
