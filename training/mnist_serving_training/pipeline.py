"""One training job end to end: data -> train -> export -> parity -> report -> version folder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnist_serving_server.core.runtime import file_sha256
from mnist_serving_training.data import DatasetSplit, load_dataset
from mnist_serving_training.export import (
    build_metadata,
    check_export_parity,
    export_onnx,
    producer_versions,
)
from mnist_serving_training.report import (
    CONFUSION_MATRIX_PLOT,
    LOSS_ACCURACY_PLOT,
    REPORT_FILENAME,
    confusion_matrix,
    per_class_accuracy,
    plot_confusion_matrix,
    plot_history,
    write_report,
)
from mnist_serving_training.repository import MODEL_FILENAME, next_free_version, staged_version
from mnist_serving_training.train import TrainConfig, TrainResult, as_tensor_images, evaluate, train

logger = logging.getLogger(__name__)

STATE_DICT_FILENAME = "model_state_dict.pt"


@dataclass(frozen=True)
class TrainingJob:
    dataset: str
    data_dir: Path
    epochs: int
    seed: int
    batch_size: int
    learning_rate: float
    output_dir: Path
    model_name: str
    version: int | None = None
    quantize: str = "none"
    plots: bool = True
    # Also write <model>_features/<version>: the first Conv + ReLU, for the drawing page.
    features_model: bool = True
    show_progress: bool = True
    # How the job was started, for the report: the command line and, from make, the make command.
    command: str | None = None
    make_command: str | None = None


def _final_evaluation(split: DatasetSplit, result: TrainResult) -> dict[str, Any]:
    from mnist_serving_training.model import PixelNormalizer

    evaluation = evaluate(
        result.model,
        as_tensor_images(split.test_images),
        torch.from_numpy(split.test_labels),
        PixelNormalizer(),
    )
    matrix = confusion_matrix(split.test_labels, evaluation.predictions, len(split.labels))
    return {
        "test_loss": evaluation.loss,
        "test_accuracy": evaluation.accuracy,
        "per_class_accuracy": per_class_accuracy(matrix),
        "confusion_matrix": matrix.tolist(),
    }


def _write_features_version(
    job: TrainingJob, parent_dir: Path, version: int, result: TrainResult, split: DatasetSplit
) -> Path:
    """Write ``<model>_features/<version>/model.onnx``, cut out of the exported parent."""
    from mnist_serving_training.features import (
        check_features_parity,
        features_model_name,
        write_features_model,
    )

    features_dir = job.output_dir / features_model_name(job.model_name)
    with staged_version(features_dir, version) as staging:
        path = staging / MODEL_FILENAME
        write_features_model(
            parent_dir / MODEL_FILENAME, path, parent_model=job.model_name, parent_version=version
        )
        parity = check_features_parity(path, result.model, split.test_images)
    logger.info(
        "wrote %s (first Conv + ReLU of %s): max |conv1_torch - conv1_onnx| = %.2e on %d images",
        features_dir / str(version),
        parent_dir,
        parity.max_abs_diff,
        parity.images,
    )
    return features_dir / str(version)


def run_job(job: TrainingJob) -> Path:
    """Run ``job``; return the version folder written. INT8 (if asked) goes to version+1."""
    started = time.monotonic()
    split = load_dataset(job.dataset, job.data_dir)
    logger.info(
        "dataset %s: %d train / %d test images (%s)",
        split.name,
        split.train_size,
        split.test_size,
        split.description,
    )
    config = TrainConfig(
        epochs=job.epochs,
        batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        seed=job.seed,
        show_progress=job.show_progress,
    )
    result = train(split, config)
    final = _final_evaluation(split, result)
    model_dir = job.output_dir / job.model_name
    version = job.version if job.version is not None else next_free_version(model_dir)
    final_dir = model_dir / str(version)
    with staged_version(model_dir, version) as staging:
        model_path = staging / MODEL_FILENAME
        export_info = export_onnx(
            result.model,
            model_path,
            build_metadata(split.labels, final["test_accuracy"], split.name),
        )
        parity = check_export_parity(model_path, result.model, split.test_images)
        logger.info(
            "export parity on %d held-out images: max |p_torch - p_onnx| = %.2e, "
            "%d argmax mismatches",
            parity.images,
            parity.max_abs_diff,
            parity.argmax_mismatches,
        )
        torch.save(result.model.state_dict(), staging / STATE_DICT_FILENAME)
        history = [
            {
                "epoch": e.epoch,
                "train_loss": e.train_loss,
                "test_loss": e.test_loss,
                "test_accuracy": e.test_accuracy,
            }
            for e in result.history
        ]
        if job.plots:
            plot_history(staging / LOSS_ACCURACY_PLOT, history)
            plot_confusion_matrix(
                staging / CONFUSION_MATRIX_PLOT,
                np.asarray(final["confusion_matrix"]),
                split.labels,
            )
        report: dict[str, Any] = {
            "model_name": job.model_name,
            "model_version": version,
            "dataset": split.name,
            "dataset_description": split.description,
            "train_size": split.train_size,
            "test_size": split.test_size,
            "epochs": job.epochs,
            "batch_size": job.batch_size,
            "learning_rate": job.learning_rate,
            "seed": job.seed,
            "torch_threads": result.threads,
            "history": history,
            **final,
            "labels": list(split.labels),
            "versions": producer_versions(),
            "exporter": export_info.exporter,
            "opset": export_info.opset,
            "export_parity": parity.as_dict(),
            "model_sha256": file_sha256(model_path),
            "model_path": str((final_dir / MODEL_FILENAME).resolve()),
            "wall_time_s": round(time.monotonic() - started, 3),
        }
        if job.command is not None:
            report["command"] = job.command
        if job.make_command is not None:
            report["make_command"] = job.make_command
        write_report(staging / REPORT_FILENAME, report)
    logger.info(
        "wrote %s: held-out accuracy %.2f%% (%s, %d epochs, %.1f s)",
        final_dir,
        100 * final["test_accuracy"],
        split.name,
        job.epochs,
        report["wall_time_s"],
    )
    if job.features_model:
        _write_features_version(job, final_dir, version, result, split)
    if job.quantize == "int8":
        from mnist_serving_training.quantize import write_int8_version

        write_int8_version(
            fp32_dir=final_dir,
            split=split,
            fp32_report=report,
            version=version + 1,
        )
    return final_dir
