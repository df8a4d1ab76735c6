"""The reference profile of a classifier: what the server compares live traffic with.

On a dataset's held-out split, the model's predicted-label distribution, the distribution
of its top-1 probability and that of the mean intensity of the images it receives, each
over its bins (mnist_serving_server.core.monitoring defines them, so training and server
bin alike). Written as `reference_profile.json` beside `model.onnx` (the server reads it
when it loads the version) and into the version's `training_report.json` under
`reference_profile`.

Training writes it for every classifier it exports; for a model trained elsewhere:

    python -m mnist_serving_training.reference_profile \
        --model model_repository/mnist/1/model.onnx --dataset mnist-sample
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnist_serving_server.core.monitoring import (
    PROFILE_FILE_NAME,
    ReferenceProfile,
    build_profile,
    write_profile,
)
from mnist_serving_training.data import DATASET_CHOICES, DatasetSplit, load_dataset
from mnist_serving_training.export import METADATA_LABELS, read_metadata
from mnist_serving_training.inference import create_session, predict_probabilities
from mnist_serving_training.report import REPORT_FILENAME
from mnist_serving_training.repository import MODEL_FILENAME

logger = logging.getLogger(__name__)

REPORT_KEY = "reference_profile"


def model_labels(model_path: Path, split: DatasetSplit) -> tuple[str, ...]:
    """The model's own labels (its `labels` metadata), else the dataset's."""
    raw = read_metadata(model_path).get(METADATA_LABELS)
    return tuple(json.loads(raw)) if raw else tuple(split.labels)


def profile_model(model_path: Path, split: DatasetSplit) -> ReferenceProfile:
    """Run the ONNX model on `split`'s held-out images and profile its answers."""
    probabilities = predict_probabilities(create_session(model_path), split.test_images)
    return build_profile(
        probabilities, split.test_images, model_labels(model_path, split), dataset=split.name
    )


def add_reference_profile(version_dir: Path, split: DatasetSplit, report: dict[str, Any]) -> None:
    """The exporter's hook: profile `version_dir/model.onnx` on `split`, write the file
    beside it and the profile into `report` (written after this)."""
    profile = profile_model(version_dir / MODEL_FILENAME, split)
    write_profile(version_dir / PROFILE_FILE_NAME, profile)
    report[REPORT_KEY] = profile.as_dict()


def write_version_profile(version_dir: Path, profile: ReferenceProfile) -> Path:
    """`reference_profile.json` in the version folder, and the report's key if it has one."""
    path = version_dir / PROFILE_FILE_NAME
    write_profile(path, profile)
    report_path = version_dir / REPORT_FILENAME
    if report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        report[REPORT_KEY] = profile.as_dict()
        report_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_serving_training.reference_profile",
        description="Compute the reference profile of an ONNX classifier on a dataset's "
        "held-out split and write it beside the model (and into its training report).",
    )
    parser.add_argument("--model", type=Path, required=True, help="the model.onnx to profile")
    parser.add_argument(
        "--dataset", default="mnist-sample", help=f"held-out images ({', '.join(DATASET_CHOICES)})"
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    split = load_dataset(args.dataset, args.data_dir)
    profile = profile_model(args.model, split)
    path = write_version_profile(args.model.parent, profile)
    logger.info(
        "wrote %s: %d held-out images of %s, label shares %s",
        path,
        profile.images,
        split.name,
        [round(share, 3) for share in profile.label_shares],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
