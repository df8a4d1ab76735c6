"""Finds models and versions in a Triton-style repository: `<repo>/<model>/<version>/model.onnx`."""

from __future__ import annotations

from pathlib import Path

MODEL_FILE_NAME = "model.onnx"


def list_versions(repository: Path, model_name: str) -> list[int]:
    """The integer version folders of `model_name` that hold a model.onnx, ascending."""
    model_root = repository / model_name
    if not model_root.is_dir():
        return []
    return sorted(
        int(entry.name)
        for entry in model_root.iterdir()
        if is_version_name(entry.name) and (entry / MODEL_FILE_NAME).is_file()
    )


def is_version_name(name: str) -> bool:
    """Canonical non-negative integers only ("1", "12"; not "01", "1.0" or non-ASCII digits).

    Anything else is ignored, so a version written as `.staging-3` and renamed to `3`
    appears at once and whole.
    """
    return name.isascii() and name.isdigit() and name == str(int(name))


def model_names(repository: Path) -> list[str]:
    """The model folders of the repository (not hidden), sorted; [] when it does not exist."""
    try:
        entries = list(repository.iterdir())
    except OSError:
        return []
    return sorted(
        entry.name
        for entry in entries
        if entry.is_dir() and not entry.name.startswith(".") and not is_version_name(entry.name)
    )
