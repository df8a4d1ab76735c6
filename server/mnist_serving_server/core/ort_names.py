"""ONNX Runtime names the server shares with the training side, without importing onnxruntime.

One definition each: the server's runtime (core/runtime.py) and the exporter and its
checks (mnist_serving_training) import them from here, so a model is opened the same way
by both.
"""

from __future__ import annotations

from typing import Final

CUDA_PROVIDER: Final = "CUDAExecutionProvider"
CPU_PROVIDER: Final = "CPUExecutionProvider"

DISABLED_OPTIMIZERS_KEY: Final = "ort_disabled_optimizers"
"""metadata_props key: comma-separated ONNX Runtime optimizers to disable for this model."""


def parse_disabled_optimizers(raw: str) -> list[str]:
    """The optimizer names of a `DISABLED_OPTIMIZERS_KEY` value ("" = none; blanks ignored)."""
    return [name.strip() for name in raw.split(",") if name.strip()]
