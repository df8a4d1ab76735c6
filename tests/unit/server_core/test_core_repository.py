"""Version discovery in a model repository, on real folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_serving_server.core.repository import is_version_name, list_versions, model_names


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


def test_model_names_are_visible_non_version_folders(repository: Path) -> None:
    (repository / ".staging").mkdir()
    (repository / "7").mkdir()
    (repository / "notes.txt").write_text("a file")
    assert model_names(repository) == ["mnist", "other"]


def test_a_missing_repository_has_no_models(tmp_path: Path) -> None:
    assert model_names(tmp_path / "nowhere") == []


@pytest.mark.parametrize(
    ("name", "is_version"),
    [
        ("1", True),
        ("12", True),
        ("0", True),
        ("01", False),
        ("1.0", False),
        (".staging-3", False),
        ("\u0661", False),
        ("latest", False),
    ],
)
def test_only_canonical_integers_are_versions(name: str, is_version: bool) -> None:
    assert is_version_name(name) is is_version
