"""The CNN, and the preprocessing and serving wrapper that the ONNX graph carries.

The normalization constants live here and only here: training feeds images through
:class:`PixelNormalizer`, and the exported graph wraps the same module.
"""

from __future__ import annotations

import torch
from torch import nn

from mnist_serving_training.data import IMAGE_SIDE, NUM_CLASSES

# MNIST's pixel mean and standard deviation after scaling to [0, 1].
NORMALIZATION_MEAN = 0.1307
NORMALIZATION_STD = 0.3081
PIXEL_MAX = 255.0

INPUT_CHANNELS = 1
CONV1_CHANNELS = 32
CONV2_CHANNELS = 64
CONV_KERNEL_SIZE = 3
POOL_SIZE = 2
HIDDEN_UNITS = 128


def _side_after_conv_and_pool(side: int) -> int:
    # An unpadded stride-1 convolution, then a floor-dividing max-pool.
    return (side - CONV_KERNEL_SIZE + 1) // POOL_SIZE


# 28 -> conv 26 -> pool 13 -> conv 11 -> pool 5: 64 channels of 5x5 = 1600 features.
FEATURE_SIDE = _side_after_conv_and_pool(_side_after_conv_and_pool(IMAGE_SIDE))
FLATTENED_FEATURES = CONV2_CHANNELS * FEATURE_SIDE * FEATURE_SIDE


class PixelNormalizer(nn.Module):
    """uint8 pixels [N,1,28,28] -> float32 normalized the way the network was trained."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        scaled = pixels.to(torch.float32) / PIXEL_MAX
        return (scaled - NORMALIZATION_MEAN) / NORMALIZATION_STD


class MnistCnn(nn.Sequential):
    """Conv(1,32,3)-ReLU-Pool-Conv(32,64,3)-ReLU-Pool-Flatten-Linear(1600,128)-ReLU-Linear(128,10).

    Takes normalized float images [N,1,28,28] and returns logits [N,10].
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(INPUT_CHANNELS, CONV1_CHANNELS, CONV_KERNEL_SIZE)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(POOL_SIZE)
        self.conv2 = nn.Conv2d(CONV1_CHANNELS, CONV2_CHANNELS, CONV_KERNEL_SIZE)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(POOL_SIZE)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(FLATTENED_FEATURES, HIDDEN_UNITS)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(HIDDEN_UNITS, NUM_CLASSES)


class ServingModel(nn.Module):
    """What the ONNX graph computes: uint8 pixels -> (probabilities, logits)."""

    def __init__(self, cnn: MnistCnn) -> None:
        super().__init__()
        self.normalizer = PixelNormalizer()
        self.cnn = cnn

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.cnn(self.normalizer(pixels))
        return torch.softmax(logits, dim=1), logits
