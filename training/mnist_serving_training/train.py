"""The training loop: seeded, deterministic, with a progress bar per epoch.

AdamW (decoupled weight decay; with weight decay 0 it is Adam), an optional learning-rate
schedule stepped per batch, and optional random affine augmentation of every training batch
(:mod:`mnist_serving_training.augment`), drawn from its own seeded generator.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mnist_serving_server.core.cores import available_cores
from mnist_serving_training.augment import AugmentConfig, augment
from mnist_serving_training.data import DatasetSplit
from mnist_serving_training.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_SEED,
    LR_SCHEDULE_CONSTANT,
    LR_SCHEDULE_COSINE,
    LR_SCHEDULE_ONECYCLE,
)
from mnist_serving_training.model import MnistCnn, PixelNormalizer

logger = logging.getLogger(__name__)

# Evaluation needs no gradients, so it can use large batches.
EVALUATION_BATCH_SIZE = 1_000
PROGRESS_INTERVAL_S = 0.1
PROGRESS_LOG_INTERVAL_S = 5.0
# The augmentation generator's seed is the training seed plus this, so that its stream is
# not the shuffle order's.
AUGMENT_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = DEFAULT_LEARNING_RATE
    seed: int = DEFAULT_SEED
    show_progress: bool = True
    # None: train on the images as they are.
    augment: AugmentConfig | None = None
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    lr_schedule: str = LR_SCHEDULE_CONSTANT


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    test_loss: float
    test_accuracy: float


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predictions: np.ndarray


@dataclass
class TrainResult:
    model: MnistCnn
    history: list[EpochResult] = field(default_factory=list)
    threads: int = 1


def configure_determinism(seed: int, threads: int) -> None:
    """Seed every generator and pin the thread count: the same seed gives the same weights."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    # Reductions split across threads add in a thread-count-dependent order; fixing the
    # count (not leaving it to whatever the machine reports) keeps results stable.
    torch.set_num_threads(threads)


def as_tensor_images(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,28,28] -> uint8 tensor [N,1,28,28] (the graph's input layout)."""
    return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)


def evaluate(
    model: MnistCnn, images: torch.Tensor, labels: torch.Tensor, normalizer: PixelNormalizer
) -> Evaluation:
    """Mean cross-entropy, accuracy and the predicted class of every image."""
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss = 0.0
    predictions: list[torch.Tensor] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, images.shape[0], EVALUATION_BATCH_SIZE):
            batch = images[start : start + EVALUATION_BATCH_SIZE]
            target = labels[start : start + EVALUATION_BATCH_SIZE]
            logits = model(normalizer(batch))
            total_loss += loss_fn(logits, target).item()
            predictions.append(logits.argmax(dim=1))
    predicted = torch.cat(predictions).numpy()
    count = max(int(images.shape[0]), 1)
    accuracy = float((predicted == labels.numpy()).mean()) if images.shape[0] else 0.0
    return Evaluation(loss=total_loss / count, accuracy=accuracy, predictions=predicted)


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-batch learning-rate schedule: constant (None), one-cycle or cosine."""
    total_steps = max(config.epochs * steps_per_epoch, 1)
    if config.lr_schedule == LR_SCHEDULE_ONECYCLE:
        # Warm up to --lr over the first 30% of the steps, then anneal (cosine) to ~0.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.learning_rate, total_steps=total_steps
        )
    if config.lr_schedule == LR_SCHEDULE_COSINE:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.lr_schedule == LR_SCHEDULE_CONSTANT:
        return None
    raise ValueError(f"unknown learning-rate schedule {config.lr_schedule!r}")


def train(
    split: DatasetSplit,
    config: TrainConfig,
    threads: int | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> TrainResult:
    """Train a fresh MnistCnn with AdamW and cross-entropy; evaluate on the test set per epoch."""
    threads = threads or available_cores()
    configure_determinism(config.seed, threads)
    model = MnistCnn()
    normalizer = PixelNormalizer()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    # The shuffle order and the augmentation have their own generators, so they depend on
    # the seed alone.
    order_generator = torch.Generator().manual_seed(config.seed)
    augment_generator = torch.Generator().manual_seed(config.seed + AUGMENT_SEED_OFFSET)
    train_images = as_tensor_images(split.train_images)
    train_labels = torch.from_numpy(split.train_labels)
    test_images = as_tensor_images(split.test_images)
    test_labels = torch.from_numpy(split.test_labels)
    result = TrainResult(model=model, threads=threads)
    batches_per_epoch = -(-split.train_size // config.batch_size)
    scheduler = make_scheduler(optimizer, config, batches_per_epoch)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(split.train_size, generator=order_generator)
        running_loss = 0.0
        seen = 0
        progress = tqdm(
            range(batches_per_epoch),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not config.show_progress,
            leave=False,
            # Redrawn in place on a terminal; in a log file every redraw is kept, so fewer.
            mininterval=PROGRESS_INTERVAL_S if sys.stderr.isatty() else PROGRESS_LOG_INTERVAL_S,
        )
        for batch_index in progress:
            indices = order[batch_index * config.batch_size : (batch_index + 1) * config.batch_size]
            batch = train_images[indices]
            if config.augment is not None:
                batch = augment(batch, config.augment, augment_generator)
            optimizer.zero_grad()
            loss = loss_fn(model(normalizer(batch)), train_labels[indices])
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            running_loss += loss.item() * indices.shape[0]
            seen += int(indices.shape[0])
            # refresh=False: redraw at the bar's own interval, not on every batch.
            progress.set_postfix(loss=f"{running_loss / seen:.4f}", refresh=False)
        progress.close()
        evaluation = evaluate(model, test_images, test_labels, normalizer)
        epoch_result = EpochResult(
            epoch=epoch,
            train_loss=running_loss / max(seen, 1),
            test_loss=evaluation.loss,
            test_accuracy=evaluation.accuracy,
        )
        result.history.append(epoch_result)
        logger.info(
            "epoch %d/%d: train loss %.4f, test loss %.4f, test accuracy %.2f%%",
            epoch,
            config.epochs,
            epoch_result.train_loss,
            epoch_result.test_loss,
            100 * epoch_result.test_accuracy,
        )
        if on_epoch is not None:
            on_epoch(epoch_result)
    model.eval()
    return result
