"""The CNN's shape, a short training run whose loss falls, and seed reproducibility."""

from __future__ import annotations

import torch
from torch import nn

from mnist_serving_training.data import IMAGE_SIDE, NUM_CLASSES, DatasetSplit
from mnist_serving_training.model import (
    FLATTENED_FEATURES,
    NORMALIZATION_MEAN,
    NORMALIZATION_STD,
    MnistCnn,
    PixelNormalizer,
)
from mnist_serving_training.train import TrainConfig, train

SHORT_EPOCHS = 3
EXAMPLE_BATCH = 3
SEED = 7
OTHER_SEED = 8
# The network, layer by layer: (layer type, parameter shapes).
EXPECTED_LAYERS = [
    (nn.Conv2d, [(32, 1, 3, 3), (32,)]),
    (nn.ReLU, []),
    (nn.MaxPool2d, []),
    (nn.Conv2d, [(64, 32, 3, 3), (64,)]),
    (nn.ReLU, []),
    (nn.MaxPool2d, []),
    (nn.Flatten, []),
    (nn.Linear, [(128, 1600), (128,)]),
    (nn.ReLU, []),
    (nn.Linear, [(10, 128), (10,)]),
]


def test_cnn_layers_match_the_specification() -> None:
    layers = [(type(layer), [tuple(p.shape) for p in layer.parameters()]) for layer in MnistCnn()]
    assert layers == EXPECTED_LAYERS
    assert FLATTENED_FEATURES == 1600  # 64 channels x 5 x 5 after two conv+pool stages


def test_cnn_output_shape() -> None:
    pixels = torch.randint(0, 256, (EXAMPLE_BATCH, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=torch.uint8)
    logits = MnistCnn()(PixelNormalizer()(pixels))
    assert logits.shape == (EXAMPLE_BATCH, NUM_CLASSES)
    assert logits.dtype == torch.float32


def test_normalizer_scales_then_standardizes() -> None:
    pixels = torch.tensor([0, 255], dtype=torch.uint8)
    normalized = PixelNormalizer()(pixels)
    expected = torch.tensor(
        [-NORMALIZATION_MEAN / NORMALIZATION_STD, (1 - NORMALIZATION_MEAN) / NORMALIZATION_STD]
    )
    assert torch.allclose(normalized, expected)


def test_short_training_run_loss_falls(small_split: DatasetSplit) -> None:
    result = train(small_split, TrainConfig(epochs=SHORT_EPOCHS, seed=SEED, show_progress=False))
    losses = [epoch.train_loss for epoch in result.history]
    assert len(losses) == SHORT_EPOCHS
    assert losses[-1] < losses[0]
    assert result.history[-1].test_loss < result.history[0].test_loss
    # 400 real digits are enough to beat chance (10%) by far.
    assert result.history[-1].test_accuracy > 0.5


def test_same_seed_same_weights(small_split: DatasetSplit) -> None:
    config = TrainConfig(epochs=1, seed=SEED, show_progress=False)
    first = train(small_split, config).model.state_dict()
    second = train(small_split, config).model.state_dict()
    other = train(
        small_split, TrainConfig(epochs=1, seed=OTHER_SEED, show_progress=False)
    ).model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
