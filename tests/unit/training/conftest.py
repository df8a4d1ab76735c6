"""Fixtures for the training tests: the real MNIST sample and small subsets of it."""

from __future__ import annotations

import pytest

from mnist_serving_training.data import DatasetSplit, load_mnist_sample
from tests.unit.training.idx_writer import spread_subset

SMALL_TRAIN_SIZE = 400
SMALL_TEST_SIZE = 200


@pytest.fixture(scope="session")
def mnist_sample() -> DatasetSplit:
    return load_mnist_sample()


@pytest.fixture(scope="session")
def small_split(mnist_sample: DatasetSplit) -> DatasetSplit:
    """A few hundred real digits of every class: enough to see the loss fall, quickly."""
    return spread_subset(mnist_sample, SMALL_TRAIN_SIZE, SMALL_TEST_SIZE)
