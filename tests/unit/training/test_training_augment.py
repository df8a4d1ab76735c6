"""The random affine augmentation: seeded, geometrically right, wired into training and the CLI."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_serving_training.augment import (
    ROBUSTNESS_TRANSFORM,
    AugmentConfig,
    augment,
    random_affine_matrices,
    transformed_copy,
)
from mnist_serving_training.cli import build_parser
from mnist_serving_training.data import DatasetSplit
from mnist_serving_training.defaults import (
    DEFAULT_EPOCHS,
    SAMPLE_EPOCHS,
    default_augment,
    default_epochs,
)
from mnist_serving_training.pipeline import TrainingJob, resolve_training
from mnist_serving_training.train import TrainConfig, train

SIDE = 28
SEED = 11
BATCH = 16
AUGMENTATION_FLAGS = (
    "--augment",
    "--rotation",
    "--translate",
    "--scale",
    "--elastic-alpha",
    "--elastic-sigma",
    "--lr-schedule",
    "--weight-decay",
    "--label-smoothing",
)
NO_MOVE = AugmentConfig(rotation_degrees=0.0, translate_pixels=0.0, scale=0.0, elastic_alpha=0.0)


def _generator(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _digits(split: DatasetSplit, count: int = BATCH) -> torch.Tensor:
    return torch.from_numpy(split.train_images[:count]).unsqueeze(1)


def _centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """(row, column) of each image's ink, [N, 2]."""
    weights = images.to(torch.float64).squeeze(1)
    positions = torch.arange(SIDE, dtype=torch.float64)
    total = weights.sum(dim=(1, 2))
    rows = (weights.sum(dim=2) * positions).sum(dim=1) / total
    columns = (weights.sum(dim=1) * positions).sum(dim=1) / total
    return torch.stack([rows, columns], dim=1)


def test_no_movement_is_the_identity(mnist_sample: DatasetSplit) -> None:
    digits = _digits(mnist_sample)
    moved = augment(digits, NO_MOVE, _generator())
    assert moved.dtype == torch.float32
    assert torch.allclose(moved, digits.to(torch.float32), atol=1e-3)


def test_same_seed_same_transforms_other_seed_others(mnist_sample: DatasetSplit) -> None:
    digits = _digits(mnist_sample)
    first = augment(digits, ROBUSTNESS_TRANSFORM, _generator())
    again = augment(digits, ROBUSTNESS_TRANSFORM, _generator())
    other = augment(digits, ROBUSTNESS_TRANSFORM, _generator(SEED + 1))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert float(first.min()) >= 0.0
    assert float(first.max()) <= 255.0


def test_translation_moves_the_ink_by_at_most_the_range(mnist_sample: DatasetSplit) -> None:
    digits = _digits(mnist_sample)
    config = AugmentConfig(rotation_degrees=0.0, translate_pixels=3.0, scale=0.0, elastic_alpha=0.0)
    shift = (_centre_of_mass(augment(digits, config, _generator())) - _centre_of_mass(digits)).abs()
    # MNIST digits sit well inside the 28x28 frame, so a 3-pixel shift loses no ink.
    assert float(shift.max()) <= 3.0 + 1e-3
    assert float(shift.max()) > 1.0


def test_matrices_rotate_and_scale_within_the_ranges() -> None:
    config = AugmentConfig(
        rotation_degrees=15.0, translate_pixels=0.0, scale=0.15, elastic_alpha=0.0
    )
    theta = random_affine_matrices(1_000, SIDE, config, _generator())
    linear = theta[:, :, :2]
    # The grid's matrix is R^T / s: its determinant is 1 / s^2, its angle -a.
    scale = 1 / torch.sqrt(torch.linalg.det(linear))
    angle = torch.rad2deg(torch.atan2(linear[:, 0, 1], linear[:, 0, 0]))
    assert float(scale.min()) >= 0.85 - 1e-6
    assert float(scale.max()) <= 1.15 + 1e-6
    assert float(angle.abs().max()) <= 15.0 + 1e-4
    assert float(angle.abs().max()) > 14.0
    assert torch.all(theta[:, :, 2] == 0)


def test_elastic_distortion_moves_pixels_by_about_alpha(mnist_sample: DatasetSplit) -> None:
    digits = _digits(mnist_sample)
    config = AugmentConfig(rotation_degrees=0.0, translate_pixels=0.0, scale=0.0, elastic_alpha=2.0)
    warped = augment(digits, config, _generator())
    assert not torch.allclose(warped, digits.to(torch.float32), atol=1.0)
    # Smooth displacements of at most 2 pixels keep the digit where it was.
    shift = (_centre_of_mass(warped) - _centre_of_mass(digits)).abs()
    assert float(shift.max()) < 2.0


def test_transformed_copy_is_seeded_uint8(mnist_sample: DatasetSplit) -> None:
    digits = _digits(mnist_sample)
    copy = transformed_copy(digits)
    assert copy.dtype == torch.uint8
    assert copy.shape == digits.shape
    assert torch.equal(copy, transformed_copy(digits))
    assert not torch.equal(copy, digits)


@pytest.mark.parametrize(
    "config",
    [
        {"rotation_degrees": -1.0},
        {"translate_pixels": math.inf},
        {"scale": 1.0},
        {"elastic_alpha": 1.0, "elastic_sigma": 0.0},
    ],
)
def test_invalid_ranges_are_refused(config: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"augmentation|elastic_sigma"):
        AugmentConfig(**config)


def test_augmented_training_is_reproducible(small_split: DatasetSplit) -> None:
    config = TrainConfig(
        epochs=1,
        seed=SEED,
        show_progress=False,
        augment=ROBUSTNESS_TRANSFORM,
        weight_decay=1e-4,
        lr_schedule="onecycle",
        label_smoothing=0.1,
    )
    first = train(small_split, config, threads=1)
    again = train(small_split, config, threads=1)
    plain = train(small_split, TrainConfig(epochs=1, seed=SEED, show_progress=False), threads=1)
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key])
    assert not torch.equal(first.model.conv1.weight, plain.model.conv1.weight)
    assert np.isfinite(first.history[0].train_loss)


def test_help_lists_the_augmentation_and_its_defaults_agree() -> None:
    parser = build_parser()
    text = parser.format_help()
    assert not [flag for flag in AUGMENTATION_FLAGS if flag not in text]
    defaults = parser.parse_args([])
    assert (
        AugmentConfig(
            rotation_degrees=defaults.rotation,
            translate_pixels=defaults.translate,
            scale=defaults.scale,
            elastic_alpha=defaults.elastic_alpha,
            elastic_sigma=defaults.elastic_sigma,
        )
        == AugmentConfig()
    )
    assert defaults.augment == "auto"
    assert defaults.epochs is None


@pytest.mark.parametrize(
    ("dataset", "epochs", "augmented"),
    [
        ("mnist-sample", SAMPLE_EPOCHS, True),
        ("mnist", DEFAULT_EPOCHS, True),
        ("fashion-mnist", DEFAULT_EPOCHS, False),
        ("idx:somewhere", DEFAULT_EPOCHS, False),
    ],
)
def test_auto_epochs_and_augmentation_follow_the_dataset(
    dataset: str, epochs: int, augmented: bool, tmp_path: Path
) -> None:
    assert default_epochs(dataset) == epochs
    assert default_augment(dataset) is augmented
    job = TrainingJob(
        dataset="auto",
        data_dir=tmp_path,
        epochs=None,
        seed=0,
        batch_size=8,
        learning_rate=1e-3,
        output_dir=tmp_path,
        model_name="m",
    )
    resolved_epochs, augmentation = resolve_training(job, dataset)
    assert resolved_epochs == epochs
    assert (augmentation is not None) is augmented
    forced = dataclasses.replace(job, epochs=3, augment=not augmented)
    assert resolve_training(forced, dataset)[0] == 3
    assert (resolve_training(forced, dataset)[1] is not None) is (not augmented)
