"""Version discovery in a model repository, on real folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.repository import list_versions, resolve_model


def make_version(repository: Path, model: str, folder: str, *, with_model: bool = True) -> Path:
    version_dir = repository / model / folder
    version_dir.mkdir(parents=True)
    if with_model:
        (version_dir / "model.onnx").write_bytes(b"onnx")
    return version_dir


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for folder in ("1", "2", "10"):
        make_version(tmp_path, "mnist", folder)
    make_version(tmp_path, "mnist", "11", with_model=False)  # a half-written version
    for folder in ("01", "latest", "3.0"):
        make_version(tmp_path, "mnist", folder)  # not canonical integer names
    (tmp_path / "mnist" / "12").write_text("a file, not a folder")
    make_version(tmp_path, "other", "5")
    return tmp_path


def test_versions_are_integer_folders_holding_a_model_in_numeric_order(repository: Path) -> None:
    assert list_versions(repository, "mnist") == [1, 2, 10]
    assert list_versions(repository, "other") == [5]
    assert list_versions(repository, "absent") == []


def test_highest_version_is_chosen_by_default(repository: Path) -> None:
    assert resolve_model(repository, "mnist") == (10, repository / "mnist" / "10" / "model.onnx")


def test_an_explicit_version_is_honoured(repository: Path) -> None:
    assert resolve_model(repository, "mnist", 2) == (2, repository / "mnist" / "2" / "model.onnx")


def test_a_missing_version_names_the_path_and_the_choices(repository: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        resolve_model(repository, "mnist", 11)
    message = str(raised.value)
    assert str(repository / "mnist" / "11" / "model.onnx") in message
    assert "[1, 2, 10]" in message


def test_a_missing_model_names_the_path(repository: Path) -> None:
    with pytest.raises(ModelLoadError, match="no versions of model 'fashion'") as raised:
        resolve_model(repository, "fashion")
    assert str(repository / "fashion") in str(raised.value)


def test_a_missing_repository_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as raised:
        resolve_model(tmp_path / "nowhere", "mnist")
    assert str(tmp_path / "nowhere" / "mnist") in str(raised.value)
