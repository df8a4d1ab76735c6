"""Static INT8 quantization (ONNX Runtime, QDQ) of the exported FP32 model.

What is quantized and why: the first convolution sees a single input channel, so its INT8
kernel is slower than FP32; it and the first max-pool stay FP32 (``nodes_to_exclude``), as
does the final softmax, so probabilities are computed in float from dequantized logits.
ONNX Runtime's ``QDQPropagationTransformer`` moves Q/DQ pairs across the max-pools and
defeats the INT8 kernels here, so the model carries a metadata key
``ort_disabled_optimizers`` that tells the server to create its session with that
optimizer disabled (about 2.3x FP32 throughput measured, equal accuracy).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from mnist_serving_server.core.runtime import file_sha256
from mnist_serving_training.data import DatasetSplit
from mnist_serving_training.export import set_metadata
from mnist_serving_training.inference import (
    INPUT_NAME,
    METADATA_DISABLED_OPTIMIZERS,
    create_session,
    predict_probabilities,
)
from mnist_serving_training.reference_profile import add_reference_profile
from mnist_serving_training.report import (
    REPORT_FILENAME,
    confusion_matrix,
    per_class_accuracy,
    write_report,
)
from mnist_serving_training.repository import MODEL_FILENAME, staged_version

logger = logging.getLogger(__name__)

CALIBRATION_IMAGES = 1_000
CALIBRATION_BATCH_SIZE = 100
# Calibration images are a seeded random subset of the training set (datasets such as the
# mnist-sample are sorted by label, so "the first N" would see only a few classes).
CALIBRATION_SEED = 0
# Kept FP32: the first Conv and the first MaxPool (see the module docstring) and the Softmax.
FP32_OP_OCCURRENCES: tuple[tuple[str, int], ...] = (("Conv", 0), ("MaxPool", 0), ("Softmax", 0))
DISABLED_OPTIMIZERS: tuple[str, ...] = ("QDQPropagationTransformer",)
METADATA_QUANTIZATION = "quantization"
PERCENTAGE_POINTS = 100.0


@dataclass(frozen=True)
class QuantizationSettings:
    calibration_images: int = CALIBRATION_IMAGES
    calibration_batch_size: int = CALIBRATION_BATCH_SIZE
    per_channel: bool = False


def nodes_kept_fp32(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes named by FP32_OP_OCCURRENCES (the n-th node of each op type)."""
    names: list[str] = []
    for op_type, occurrence in FP32_OP_OCCURRENCES:
        matches = [node.name for node in model.graph.node if node.op_type == op_type]
        if len(matches) <= occurrence:
            raise ValueError(f"the FP32 graph has no {op_type} node number {occurrence + 1}")
        names.append(matches[occurrence])
    return names


def select_calibration_images(images: np.ndarray, count: int) -> np.ndarray:
    """A seeded random subset of ``count`` images (all of them if there are fewer)."""
    if len(images) <= count:
        return images
    rng = np.random.default_rng(CALIBRATION_SEED)
    return images[np.sort(rng.choice(len(images), size=count, replace=False))]


def quantize_int8(
    fp32_path: Path,
    output_path: Path,
    calibration_images: np.ndarray,
    settings: QuantizationSettings = QuantizationSettings(),
) -> dict[str, Any]:
    """Write a statically quantized QDQ copy of ``fp32_path``; return what was done."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Batches(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self, images: np.ndarray, batch_size: int) -> None:
            pixels = np.ascontiguousarray(images, dtype=np.uint8)[:, np.newaxis]
            self._batches = iter(
                [
                    {INPUT_NAME: pixels[start : start + batch_size]}
                    for start in range(0, len(pixels), batch_size)
                ]
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_model = onnx.load(str(fp32_path))
    excluded = nodes_kept_fp32(fp32_model)
    images = select_calibration_images(calibration_images, settings.calibration_images)
    with tempfile.TemporaryDirectory(prefix="mnist-int8-") as scratch:
        # ONNX Runtime's recommended pre-processing (shape inference); it keeps node names.
        preprocessed_path = Path(scratch) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(preprocessed_path))
        quantized_path = Path(scratch) / MODEL_FILENAME
        quantize_static(
            preprocessed_path,
            quantized_path,
            _Batches(images, settings.calibration_batch_size),
            quant_format=QuantFormat.QDQ,
            # uint8 activations with int8 weights: the fast combination on x86 CPUs.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=settings.per_channel,
            nodes_to_exclude=excluded,
            calibrate_method=CalibrationMethod.MinMax,
        )
        quantized = onnx.load(str(quantized_path))
    details: dict[str, Any] = {
        "method": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "activation_type": "uint8",
        "weight_type": "int8",
        "per_channel": settings.per_channel,
        "calibration_method": "MinMax",
        "calibration_images": len(images),
        "calibration_source": f"random training images (seed {CALIBRATION_SEED})",
        "nodes_kept_fp32": excluded,
        METADATA_DISABLED_OPTIMIZERS: list(DISABLED_OPTIMIZERS),
    }
    metadata = {prop.key: prop.value for prop in fp32_model.metadata_props}
    metadata[METADATA_DISABLED_OPTIMIZERS] = ",".join(DISABLED_OPTIMIZERS)
    metadata[METADATA_QUANTIZATION] = json.dumps(
        {k: details[k] for k in ("format", "activation_type", "weight_type", "nodes_kept_fp32")}
    )
    set_metadata(quantized, metadata)
    onnx.save(quantized, str(output_path), save_as_external_data=False)
    return details


def compare_with_fp32(
    fp32_path: Path, int8_path: Path, images: np.ndarray, labels: np.ndarray
) -> dict[str, Any]:
    """Accuracy of both models on the same held-out images, and how far INT8 drifts."""
    fp32 = predict_probabilities(create_session(fp32_path), images)
    int8 = predict_probabilities(create_session(int8_path), images)
    fp32_accuracy = float((fp32.argmax(axis=1) == labels).mean())
    int8_accuracy = float((int8.argmax(axis=1) == labels).mean())
    return {
        "fp32_test_accuracy": fp32_accuracy,
        "int8_test_accuracy": int8_accuracy,
        "accuracy_difference_points": round((int8_accuracy - fp32_accuracy) * PERCENTAGE_POINTS, 4),
        "prediction_agreement": float((fp32.argmax(axis=1) == int8.argmax(axis=1)).mean()),
        "max_abs_probability_diff": float(np.max(np.abs(fp32 - int8))),
        "images": len(images),
        "int8_predictions": int8.argmax(axis=1),
    }


def write_int8_version(
    fp32_dir: Path,
    split: DatasetSplit,
    fp32_report: dict[str, Any],
    version: int,
    settings: QuantizationSettings = QuantizationSettings(),
) -> Path:
    """Quantize ``fp32_dir/model.onnx`` into ``<model>/<version>/`` with its own report."""
    fp32_path = fp32_dir / MODEL_FILENAME
    model_dir = fp32_dir.parent
    final_dir = model_dir / str(version)
    with staged_version(model_dir, version) as staging:
        int8_path = staging / MODEL_FILENAME
        details = quantize_int8(fp32_path, int8_path, split.train_images, settings)
        comparison = compare_with_fp32(fp32_path, int8_path, split.test_images, split.test_labels)
        predictions = comparison.pop("int8_predictions")
        matrix = confusion_matrix(split.test_labels, predictions, len(split.labels))
        report = {
            key: fp32_report[key]
            for key in (
                "model_name",
                "dataset",
                "dataset_description",
                "train_size",
                "test_size",
                "epochs",
                "batch_size",
                "optimizer",
                "learning_rate",
                "lr_schedule",
                "weight_decay",
                "label_smoothing",
                "augmentation",
                "seed",
                "history",
                "labels",
                "versions",
            )
        }
        report.update(
            {
                "model_version": version,
                "test_accuracy": comparison["int8_test_accuracy"],
                "per_class_accuracy": per_class_accuracy(matrix),
                "confusion_matrix": matrix.tolist(),
                "quantization": {
                    **details,
                    "fp32_version": int(fp32_dir.name),
                    "fp32_model_sha256": fp32_report["model_sha256"],
                    **comparison,
                },
                "model_sha256": file_sha256(int8_path),
                # Relative to the model repository, as in the FP32 report.
                "model_path": (
                    Path(fp32_report["model_name"]) / str(version) / MODEL_FILENAME
                ).as_posix(),
            }
        )
        add_reference_profile(staging, split, report)  # the INT8 model's own answers
        write_report(staging / REPORT_FILENAME, report)
    logger.info(
        "wrote %s (INT8): held-out accuracy %.2f%% vs FP32 %.2f%% (%+.2f points)",
        final_dir,
        PERCENTAGE_POINTS * comparison["int8_test_accuracy"],
        PERCENTAGE_POINTS * comparison["fp32_test_accuracy"],
        comparison["accuracy_difference_points"],
    )
    return final_dir
