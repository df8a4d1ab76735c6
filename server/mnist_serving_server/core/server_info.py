"""What the server says about itself in V2's server metadata, on every transport."""

from __future__ import annotations

from importlib import metadata
from typing import Final

SERVER_NAME: Final = "mnist-serving"
DISTRIBUTION: Final = "mnist-serving"
UNKNOWN_VERSION: Final = "0+unknown"
EXTENSIONS: Final[tuple[str, ...]] = (
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
)
"""Triton's optional extensions this server implements on every transport (and only those)."""
HTTP_EXTENSIONS: Final[tuple[str, ...]] = (*EXTENSIONS, "binary_tensor_data")
"""Over HTTP also Triton's binary tensor data extension (gRPC has raw contents instead)."""


def server_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return UNKNOWN_VERSION
