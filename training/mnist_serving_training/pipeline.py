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
from mnist_serving_training.augment import (
    ROBUSTNESS_SEED,
    ROBUSTNESS_TRANSFORM,
    AugmentConfig,
    transformed_copy,
)
from mnist_serving_training.data import DatasetSplit, load_dataset
from mnist_serving_training.defaults import (
    DEFAULT_LABEL_SMOOTHING,
    DEFAULT_LR_SCHEDULE,
    DEFAULT_WEIGHT_DECAY,
    default_augment,
    default_epochs,
)
from mnist_serving_training.export import (
    build_metadata,
    check_export_parity,
    export_onnx,
    producer_versions,
)
from mnist_serving_training.reference_profile import add_reference_profile
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
    # None: the dataset's default (defaults.default_epochs).
    epochs: int | None
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
    # None: augment the datasets of defaults.AUGMENTED_DATASETS; True/False: always/never.
    augment: bool | None = None
    augment_config: AugmentConfig = ROBUSTNESS_TRANSFORM
    weight_decay: float = DEFAULT_WEIGHT_DECAY
    lr_schedule: str = DEFAULT_LR_SCHEDULE
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING
    # How the job was started, for the report: the command line and, from make, the make command.
    command: str | None = None
    make_command: str | None = None


def _final_evaluation(split: DatasetSplit, result: TrainResult) -> dict[str, Any]:
    """The held-out digits as they are, and the same digits randomly moved (``transformed``)."""
    from mnist_serving_training.model import PixelNormalizer

    images = as_tensor_images(split.test_images)
    labels = torch.from_numpy(split.test_labels)
    evaluation = evaluate(result.model, images, labels, PixelNormalizer())
    matrix = confusion_matrix(split.test_labels, evaluation.predictions, len(split.labels))
    moved = evaluate(result.model, transformed_copy(images), labels, PixelNormalizer())
    moved_matrix = confusion_matrix(split.test_labels, moved.predictions, len(split.labels))
    return {
        "test_loss": evaluation.loss,
        "test_accuracy": evaluation.accuracy,
        "per_class_accuracy": per_class_accuracy(matrix),
        "confusion_matrix": matrix.tolist(),
        "transformed_test": {
            "description": "the held-out images, each randomly rotated, shifted and scaled "
            "(uniform in +-rotation_degrees, +-translate_pixels per axis, 1 +- scale; "
            "bilinear, rounded to uint8), drawn with this seed",
            "transform": ROBUSTNESS_TRANSFORM.as_dict(),
            "seed": ROBUSTNESS_SEED,
            "test_accuracy": moved.accuracy,
            "per_class_accuracy": per_class_accuracy(moved_matrix),
        },
    }


def resolve_training(job: TrainingJob, dataset: str) -> tuple[int, AugmentConfig | None]:
    """The epochs and augmentation of ``job`` once the dataset it loaded is known."""
    epochs = job.epochs if job.epochs is not None else default_epochs(dataset)
    augmented = job.augment if job.augment is not None else default_augment(dataset)
    return epochs, job.augment_config if augmented else None


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
    epochs, augmentation = resolve_training(job, split.name)
    logger.info(
        "%d epochs, AdamW lr %g (%s schedule), weight decay %g, label smoothing %g, batch %d, "
        "augmentation %s",
        epochs,
        job.learning_rate,
        job.lr_schedule,
        job.weight_decay,
        job.label_smoothing,
        job.batch_size,
        "off" if augmentation is None else augmentation.as_dict(),
    )
    config = TrainConfig(
        epochs=epochs,
        batch_size=job.batch_size,
        learning_rate=job.learning_rate,
        seed=job.seed,
        show_progress=job.show_progress,
        augment=augmentation,
        weight_decay=job.weight_decay,
        lr_schedule=job.lr_schedule,
        label_smoothing=job.label_smoothing,
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
            "epochs": epochs,
            "batch_size": job.batch_size,
            "optimizer": "AdamW",
            "learning_rate": job.learning_rate,
            "lr_schedule": job.lr_schedule,
            "weight_decay": job.weight_decay,
            "label_smoothing": job.label_smoothing,
            "augmentation": None if augmentation is None else augmentation.as_dict(),
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
            # Relative to the model repository: the same wherever it was trained.
            "model_path": (Path(job.model_name) / str(version) / MODEL_FILENAME).as_posix(),
            "wall_time_s": round(time.monotonic() - started, 3),
        }
        if job.command is not None:
            report["command"] = job.command
        if job.make_command is not None:
            report["make_command"] = job.make_command
        add_reference_profile(staging, split, report)  # what the server compares with
        write_report(staging / REPORT_FILENAME, report)
    logger.info(
        "wrote %s: held-out accuracy %.2f%%, %.2f%% moved (%s, %d epochs, %.1f s)",
        final_dir,
        100 * final["test_accuracy"],
        100 * final["transformed_test"]["test_accuracy"],
        split.name,
        epochs,
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
