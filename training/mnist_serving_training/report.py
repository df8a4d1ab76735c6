"""The training report (JSON) and its plots (PNG)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPORT_FILENAME = "training_report.json"
LOSS_ACCURACY_PLOT = "loss_accuracy.png"
CONFUSION_MATRIX_PLOT = "confusion_matrix.png"
PLOT_DPI = 100
PERCENT = 100.0


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int) -> np.ndarray:
    """Counts [true class, predicted class]."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> list[float]:
    """Recall of each class (0.0 for a class with no test images)."""
    totals = matrix.sum(axis=1)
    hits = np.diag(matrix)
    return [float(h / t) if t else 0.0 for h, t in zip(hits, totals, strict=True)]


def write_report(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")


def plot_history(path: Path, history: Sequence[dict[str, Any]]) -> None:
    """Train/test loss and test accuracy per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [entry["epoch"] for entry in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [e["train_loss"] for e in history], marker="o", label="train")
    loss_axis.plot(epochs, [e["test_loss"] for e in history], marker="o", label="test")
    loss_axis.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    loss_axis.legend()
    accuracy_axis.plot(
        epochs, [PERCENT * e["test_accuracy"] for e in history], marker="o", color="tab:green"
    )
    accuracy_axis.set(xlabel="epoch", ylabel="accuracy (%)", title="Held-out accuracy")
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.set_xticks(epochs)
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)
    plt.close(figure)


def plot_confusion_matrix(path: Path, matrix: np.ndarray, labels: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 6))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    ticks = np.arange(len(labels))
    axis.set_xticks(ticks, labels=list(labels), rotation=45, ha="right")
    axis.set_yticks(ticks, labels=list(labels))
    axis.set(xlabel="predicted", ylabel="true", title="Confusion matrix (held-out set)")
    threshold = matrix.max() / 2 if matrix.size else 0
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            axis.text(
                column,
                row,
                str(matrix[row, column]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if matrix[row, column] > threshold else "black",
            )
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)
    plt.close(figure)
