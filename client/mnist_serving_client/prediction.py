"""`Prediction`: what the server said about one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_serving_client.errors import MnistServingError
from mnist_serving_proto import classifier_pb2

NUM_CLASSES = 10
# Digits shown by repr: enough to tell 0.999 from 0.990, short enough to read.
REPR_DIGITS = 4


@dataclass(frozen=True, eq=False, repr=False)
class Prediction:
    """The classification of one image.

    Attributes:
        label: the most probable digit, 0-9.
        confidence: the probability of `label`, in [0, 1].
        probabilities: all 10 class probabilities (float32, read-only), indexed by digit.
        top_k: the `top_k` most probable (digit, probability) pairs, most probable first;
            empty unless `top_k` was asked for.
        class_name: the name of class `label` in the model's metadata (e.g. "7" for MNIST,
            "Sneaker" for Fashion-MNIST); "" when the server sends none.
    """

    label: int
    confidence: float
    probabilities: np.ndarray[Any, np.dtype[np.float32]]
    top_k: tuple[tuple[int, float], ...] = ()
    class_name: str = ""

    def __repr__(self) -> str:
        text = f"Prediction(label={self.label}"
        if self.class_name and self.class_name != str(self.label):
            text += f", class_name={self.class_name!r}"
        text += f", confidence={self.confidence:.{REPR_DIGITS}f}"
        if self.top_k:
            pairs = ", ".join(f"({label}, {prob:.{REPR_DIGITS}f})" for label, prob in self.top_k)
            text += f", top_k=({pairs})"
        return text + ")"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prediction):
            return NotImplemented
        return (
            self.label == other.label
            and self.confidence == other.confidence
            and self.class_name == other.class_name
            and self.top_k == other.top_k
            and np.array_equal(self.probabilities, other.probabilities)
        )

    # Mutable-looking numpy field: predictions compare by value but are not hashable.
    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI's `--json` output uses it)."""
        result: dict[str, Any] = {"label": self.label}
        if self.class_name:
            result["class_name"] = self.class_name
        result["confidence"] = self.confidence
        result["probabilities"] = [float(p) for p in self.probabilities]
        if self.top_k:
            result["top_k"] = [{"label": label, "probability": p} for label, p in self.top_k]
        return result


def prediction_from_proto(message: classifier_pb2.Prediction) -> Prediction:
    """Build a `Prediction` from the wire message, checking it is well formed."""
    probabilities = np.array(message.probabilities, dtype=np.float32)
    if probabilities.shape != (NUM_CLASSES,):
        raise MnistServingError(
            f"server sent {probabilities.size} class probabilities, expected {NUM_CLASSES}"
        )
    probabilities.flags.writeable = False
    return Prediction(
        label=int(message.label),
        confidence=float(message.probability),
        probabilities=probabilities,
        top_k=tuple((int(score.label), float(score.probability)) for score in message.top_k),
        class_name=str(message.class_name),
    )


def predictions_from_response(
    response: classifier_pb2.ClassifyResponse, expected_count: int
) -> list[Prediction]:
    """The predictions of one reply, checking there is one per image sent."""
    if len(response.predictions) != expected_count:
        raise MnistServingError(
            f"server answered {len(response.predictions)} predictions for {expected_count} images"
        )
    return [prediction_from_proto(message) for message in response.predictions]
