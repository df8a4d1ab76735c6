"""Helpers for the Classify integration tests: requests and a reference ONNX Runtime."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image as PilImage

from mnist_serving_proto import classifier_pb2

IMAGE_SHAPE = (28, 28)
# The acceptance bound: served probabilities equal ONNX Runtime run directly on the pixels.
PARITY_ATOL = 1e-6


def raw_request(digits: np.ndarray, **fields: object) -> classifier_pb2.ClassifyRequest:
    """A ClassifyRequest with each uint8 [28,28] digit as raw pixels."""
    images = [classifier_pb2.Image(pixels=digit.astype(np.uint8).tobytes()) for digit in digits]
    return classifier_pb2.ClassifyRequest(images=images, **fields)  # type: ignore[arg-type]


def png_bytes(digit: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PilImage.fromarray(digit.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class ReferenceModel:
    """The model file run directly with ONNX Runtime: what the server must agree with."""

    def __init__(self, model_dir: Path) -> None:
        self._session = ort.InferenceSession(
            str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name

    def probabilities(self, digits: np.ndarray) -> np.ndarray:
        """float32 [n,10] for uint8 [n,28,28] digits."""
        pixels = np.ascontiguousarray(digits.reshape(-1, 1, *IMAGE_SHAPE), dtype=np.uint8)
        (result,) = self._session.run(["probabilities"], {self._input: pixels})
        return np.asarray(result)


def served_probabilities(response: classifier_pb2.ClassifyResponse) -> np.ndarray:
    return np.array([list(p.probabilities) for p in response.predictions], dtype=np.float32)
