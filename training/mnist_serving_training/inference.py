"""Running an exported model in ONNX Runtime the way the server does (CPU provider)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mnist_serving_server.core.ort_names import (
    CPU_PROVIDER,
    DISABLED_OPTIMIZERS_KEY,
    parse_disabled_optimizers,
)

INPUT_NAME = "pixels"
PROBABILITIES_OUTPUT = "probabilities"
LOGITS_OUTPUT = "logits"
# Metadata key: comma-separated ONNX Runtime optimizers to disable when opening the model
# (the server's definition, so both open a model the same way).
METADATA_DISABLED_OPTIMIZERS = DISABLED_OPTIMIZERS_KEY
INFERENCE_BATCH_SIZE = 1_000


def disabled_optimizers(path: Path) -> list[str]:
    """The optimizers the model's metadata asks the runtime to disable (often none)."""
    model = onnx.load(str(path), load_external_data=False)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    return parse_disabled_optimizers(metadata.get(METADATA_DISABLED_OPTIMIZERS, ""))


def create_session(path: Path, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session honouring ``ort_disabled_optimizers`` (0 threads = all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(
        str(path),
        options,
        providers=[CPU_PROVIDER],
        disabled_optimizers=disabled_optimizers(path),
    )


def predict_probabilities(session: Any, images: np.ndarray) -> np.ndarray:
    """Probabilities [N,10] for uint8 images [N,28,28], run in batches."""
    pixels = np.ascontiguousarray(images, dtype=np.uint8)[:, np.newaxis]
    batches = [
        session.run(
            [PROBABILITIES_OUTPUT], {INPUT_NAME: pixels[start : start + INFERENCE_BATCH_SIZE]}
        )[0]
        for start in range(0, len(pixels), INFERENCE_BATCH_SIZE)
    ]
    return np.concatenate(batches) if batches else np.zeros((0, 0), dtype=np.float32)
