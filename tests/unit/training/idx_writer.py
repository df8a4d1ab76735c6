"""Writes real MNIST digits as IDX files (gzipped or raw) for the loader tests."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from mnist_serving_training.data import IDX_UNSIGNED_BYTE, DatasetSplit

IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic, big-endian dimensions, then the data."""
    header = bytes([0, 0, IDX_UNSIGNED_BYTE, array.ndim])
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return header + dims + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_idx_dir(
    directory: Path, split: DatasetSplit, gzipped: bool, train_count: int, test_count: int
) -> dict[str, Path]:
    """Write the first images of ``split`` as the four MNIST IDX files; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": split.train_images[:train_count],
        "train_labels": split.train_labels[:train_count],
        "test_images": split.test_images[:test_count],
        "test_labels": split.test_labels[:test_count],
    }
    paths: dict[str, Path] = {}
    for role, stem in IDX_STEMS.items():
        payload = idx_bytes(arrays[role])
        if gzipped:
            path = directory / f"{stem}.gz"
            path.write_bytes(gzip.compress(payload))
        else:
            path = directory / stem
            path.write_bytes(payload)
        paths[role] = path
    return paths


def spread_subset(split: DatasetSplit, train_count: int, test_count: int) -> DatasetSplit:
    """Evenly spaced images of each part (the sample is sorted by label: keep every class)."""
    train_pick = np.linspace(0, split.train_size - 1, train_count).astype(np.int64)
    test_pick = np.linspace(0, split.test_size - 1, test_count).astype(np.int64)
    return DatasetSplit(
        name=split.name,
        train_images=split.train_images[train_pick],
        train_labels=split.train_labels[train_pick],
        test_images=split.test_images[test_pick],
        test_labels=split.test_labels[test_pick],
        labels=split.labels,
        description=f"{train_count}/{test_count} evenly spaced images of {split.name}",
    )
