"""Watching a classifier's answers: predictions, confidence and input drift, per batch.

Training computes a **reference profile** on its held-out split (`build_profile`, written
as `reference_profile.json` beside `model.onnx`): three distributions, each over fixed
bins, of what the served model will see and say:

- `label`: the predicted (top-1) class, one bin per class;
- `confidence`: the top-1 probability, bins `CONFIDENCE_PSI_EDGES`;
- `input`: the **mean intensity** of the image the model receives (its UINT8 pixels
  averaged, / 255, so 0 = black, 1 = white; MNIST digits ~0.13, Fashion-MNIST clothes
  ~0.29): ten bins whose edges are the reference's deciles.

The server keeps, per served classifier version (and per worker process), a ring of the
last `window` images' bin indices and their counts, updated with numpy (no per-image
Python: `VersionMonitor.observe_statistic`) once per flush of the batches that
core/shadow.py's `BatchTap` gathers (64 images, or 0.1 s after the first), and the population
stability index of each signal against the reference,
PSI = sum over bins of (window share - reference share) x ln(window share / reference
share), shares floored at `PSI_FLOOR`. It is reported once the window is full, then every
`window // PSI_UPDATES_PER_WINDOW` images. Common reading: < 0.1 no shift, 0.1-0.25 a
moderate one, > 0.25 a large one (docs/operations.md).

Every classifier version (a `probabilities` output [N, C] and C labels in its metadata)
also reports each batch's top-1 label counts and top-1 probabilities (bucketed for a
histogram, `CONFIDENCE_BUCKETS`) to its `MonitoringObserver` (the metrics). A version
without a profile reports no drift; one whose profile does not match it (another number of
labels, unreadable) reports no drift and one warning names why; a model that is not a
classifier gets no monitor at all.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np

from mnist_serving_server.core.classifier import PROBABILITIES_OUTPUT
from mnist_serving_server.core.runtime import ModelInfo

logger = logging.getLogger(__name__)

PROFILE_FILE_NAME: Final = "reference_profile.json"
"""Beside model.onnx in the version folder; read when the version loads."""
PROFILE_FORMAT: Final = 1
INPUT_STATISTIC: Final = "mean_intensity"
SIGNALS: Final = ("label", "confidence", "input")
DEFAULT_WINDOW: Final = 1_000
PSI_UPDATES_PER_WINDOW: Final = 20
PSI_FLOOR: Final = 1e-4
"""A bin's share is at least this (an empty bin would make PSI infinite)."""
INPUT_BINS: Final = 10
UINT8_MAX: Final = 255.0
CONFIDENCE_PSI_EDGES: Final = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999)
"""Inner edges of the confidence bins for PSI: [0, 0.5), [0.5, 0.7), ..., [0.9999, 1]."""
CONFIDENCE_BUCKETS: Final = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
"""Upper bounds of the top-1 probability histogram (Prometheus `le`; +Inf is added)."""
_BUCKET_BOUNDS = np.asarray((*CONFIDENCE_BUCKETS, math.inf), dtype=np.float64)
_NO_STATISTIC = np.zeros(0)


@runtime_checkable
class MonitoringObserver(Protocol):
    """Where a version's monitor reports (implemented by the metrics module)."""

    def on_predictions(
        self, label_counts: np.ndarray, confidence_buckets: np.ndarray, confidence_sum: float
    ) -> None:
        """One batch: images per top-1 class, per `CONFIDENCE_BUCKETS` bucket (+Inf last)."""

    def on_drift(self, psi: Mapping[str, float]) -> None:
        """The window's PSI by signal (`SIGNALS`)."""

    def on_shadow(self, shadow_version: str, outcome: str, images: int) -> None:
        """Images copied to the shadow version, by outcome (core/shadow.py)."""


@dataclass(frozen=True)
class ReferenceProfile:
    """The three reference distributions of one model version (shares sum to 1 each)."""

    labels: tuple[str, ...]
    label_shares: tuple[float, ...]
    confidence_edges: tuple[float, ...]
    confidence_shares: tuple[float, ...]
    input_edges: tuple[float, ...]
    input_shares: tuple[float, ...]
    images: int
    dataset: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The JSON document (`reference_profile.json`, the training report's key)."""
        return {
            "format": PROFILE_FORMAT,
            "dataset": self.dataset,
            "images": self.images,
            "labels": list(self.labels),
            "signals": {
                "label": {"shares": list(self.label_shares)},
                "confidence": {
                    "statistic": "top-1 probability",
                    "edges": list(self.confidence_edges),
                    "shares": list(self.confidence_shares),
                },
                "input": {
                    "statistic": INPUT_STATISTIC,
                    "description": "mean of the input's values / 255 (UINT8 pixels: 0 black, "
                    "1 white)",
                    "edges": list(self.input_edges),
                    "shares": list(self.input_shares),
                },
            },
        }


class ProfileError(ValueError):
    """A reference profile that cannot be used (the version serves unmonitored)."""


def input_statistic(pixels: np.ndarray) -> np.ndarray:
    """Each image's mean intensity (float64 [N]); UINT8 values are scaled to 0-1."""
    rows = pixels.reshape(len(pixels), -1)
    means: np.ndarray
    if rows.dtype == np.uint8:
        means = rows.sum(axis=1, dtype=np.uint32) * (1.0 / (UINT8_MAX * rows.shape[1]))
    else:
        means = rows.mean(axis=1, dtype=np.float64)
    return means


def _shares(bins: np.ndarray, count: int) -> tuple[float, ...]:
    counts = np.bincount(bins, minlength=count)[:count]
    return tuple(float(c) for c in counts / max(1, int(counts.sum())))


def build_profile(
    probabilities: np.ndarray, pixels: np.ndarray, labels: Sequence[str], dataset: str = ""
) -> ReferenceProfile:
    """The reference profile of a model from its answers on held-out images."""
    if probabilities.ndim != 2 or probabilities.shape[1] != len(labels):
        raise ProfileError(f"probabilities of shape {probabilities.shape} for {len(labels)} labels")
    if len(probabilities) != len(pixels) or len(pixels) == 0:
        raise ProfileError(f"{len(probabilities)} answers for {len(pixels)} images")
    top = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    statistic = input_statistic(pixels)
    quantiles = np.quantile(statistic, np.linspace(0, 1, INPUT_BINS + 1)[1:-1])
    input_edges = tuple(float(edge) for edge in np.unique(quantiles))
    confidence_edges = np.asarray(CONFIDENCE_PSI_EDGES)
    return ReferenceProfile(
        labels=tuple(labels),
        label_shares=_shares(top, len(labels)),
        confidence_edges=CONFIDENCE_PSI_EDGES,
        confidence_shares=_shares(
            np.searchsorted(confidence_edges, confidence, side="right"), len(confidence_edges) + 1
        ),
        input_edges=input_edges,
        input_shares=_shares(
            np.searchsorted(np.asarray(input_edges), statistic, side="right"),
            len(input_edges) + 1,
        ),
        images=len(pixels),
        dataset=dataset,
    )


def write_profile(path: Path, profile: ReferenceProfile) -> None:
    path.write_text(json.dumps(profile.as_dict(), indent=2) + "\n", encoding="utf-8")


def _floats(value: object, what: str) -> tuple[float, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
        raise ProfileError(f"{what} is not a list of numbers")
    return tuple(float(v) for v in value)


def _signal(document: dict[str, Any], name: str) -> dict[str, Any]:
    signal = document.get("signals", {}).get(name)
    if not isinstance(signal, dict):
        raise ProfileError(f"no {name!r} signal")
    return signal


def parse_profile(document: object) -> ReferenceProfile:
    """A profile from its JSON document; ProfileError saying what is wrong."""
    if not isinstance(document, dict) or document.get("format") != PROFILE_FORMAT:
        raise ProfileError(f"not a reference profile of format {PROFILE_FORMAT}")
    labels = document.get("labels")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ProfileError("'labels' is not a list of strings")
    confidence = _signal(document, "confidence")
    inputs = _signal(document, "input")
    if inputs.get("statistic") != INPUT_STATISTIC:
        raise ProfileError(f"input statistic {inputs.get('statistic')!r}, not {INPUT_STATISTIC!r}")
    profile = ReferenceProfile(
        labels=tuple(labels),
        label_shares=_floats(_signal(document, "label").get("shares"), "label shares"),
        confidence_edges=_floats(confidence.get("edges"), "confidence edges"),
        confidence_shares=_floats(confidence.get("shares"), "confidence shares"),
        input_edges=_floats(inputs.get("edges"), "input edges"),
        input_shares=_floats(inputs.get("shares"), "input shares"),
        images=int(document.get("images", 0)),
        dataset=str(document.get("dataset", "")),
    )
    for name, edges, shares in (
        ("label", (0.0,) * (len(profile.labels) - 1), profile.label_shares),
        ("confidence", profile.confidence_edges, profile.confidence_shares),
        ("input", profile.input_edges, profile.input_shares),
    ):
        if len(shares) != len(edges) + 1:
            raise ProfileError(f"{name}: {len(shares)} shares for {len(edges) + 1} bins")
        if list(edges) != sorted(edges) or (name != "label" and len(set(edges)) != len(edges)):
            raise ProfileError(f"{name}: edges not strictly increasing")
        if not math.isclose(sum(shares), 1.0, abs_tol=1e-3) or min(shares) < 0:
            raise ProfileError(f"{name}: shares do not sum to 1")
    return profile


def read_profile(path: Path) -> ReferenceProfile | None:
    """The profile at `path`; None when there is none, ProfileError when it is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read {path}: {exc}") from None
    try:
        return parse_profile(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ProfileError(f"{path} is not JSON: {exc}") from None


def classifier_classes(info: ModelInfo) -> int:
    """C for a classifier (a `probabilities` output [N, C] and C labels), else 0."""
    for spec in info.outputs:
        if spec.name == PROBABILITIES_OUTPUT and len(spec.shape) == 2:
            classes = spec.shape[1]
            if classes > 0 and classes == len(info.labels):
                return classes
    return 0


class VersionMonitor:
    """One served classifier version's predictions, confidence and drift window."""

    __slots__ = (
        "_counts",
        "_edges",
        "_ends",
        "_filled",
        "_labels_only",
        "_observer",
        "_offsets",
        "_pending",
        "_position",
        "_reference",
        "_ring",
        "_update_every",
        "_window",
        "classes",
    )

    def __init__(
        self,
        classes: int,
        observer: MonitoringObserver,
        profile: ReferenceProfile | None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.classes = classes
        self._observer = observer
        self._window = max(1, window)
        self._update_every = max(1, self._window // PSI_UPDATES_PER_WINDOW)
        self._labels_only = profile is None
        self._edges = (np.zeros(0), np.zeros(0))
        if profile is None:
            return
        # One ring [window, 3] of bin indices, each signal's bins offset into one count
        # vector (label bins, then confidence bins, then input bins, then one "empty" bin
        # that unfilled ring slots point at): one bincount per batch updates all three.
        shares = (profile.label_shares, profile.confidence_shares, profile.input_shares)
        sizes = [len(s) for s in shares]
        self._offsets = np.asarray([0, sizes[0], sizes[0] + sizes[1]], dtype=np.int64)
        self._ends = self._offsets + np.asarray(sizes)
        total = sum(sizes)
        self._edges = (np.asarray(profile.confidence_edges), np.asarray(profile.input_edges))
        self._reference = np.maximum(np.concatenate(shares), PSI_FLOOR)
        self._ring = np.full((self._window, len(SIGNALS)), total, dtype=np.int64)
        self._counts = np.zeros(total + 1, dtype=np.int64)
        self._counts[total] = self._window * len(SIGNALS)
        self._position = 0
        self._filled = 0
        self._pending = 0

    @property
    def drift(self) -> bool:
        """Whether this version has a reference to compare with."""
        return not self._labels_only

    def observe(self, pixels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Images and their `probabilities` [N, C]: counts, histogram, window.

        Returns the top-1 class of each image."""
        return self.observe_statistic(
            input_statistic(pixels) if self.drift else _NO_STATISTIC, probabilities
        )

    def observe_statistic(self, statistic: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """`observe` given each image's `input_statistic` (any array without drift)."""
        rows = len(probabilities)
        top: np.ndarray = probabilities.argmax(axis=1)
        if rows == 0:
            return top
        confidence = probabilities[np.arange(rows), top]
        buckets = np.bincount(
            np.searchsorted(_BUCKET_BOUNDS, confidence, side="left"),
            minlength=len(_BUCKET_BOUNDS),
        )
        self._observer.on_predictions(
            np.bincount(top, minlength=self.classes), buckets, float(confidence.sum())
        )
        if not self._labels_only:
            self._push(statistic, top, confidence)
        return top

    def _push(self, statistic: np.ndarray, top: np.ndarray, confidence: np.ndarray) -> None:
        window = self._window
        if len(top) > window:
            statistic, top, confidence = statistic[-window:], top[-window:], confidence[-window:]
        rows = len(top)
        confidence_edges, input_edges = self._edges
        new = np.empty((rows, len(SIGNALS)), dtype=np.int64)
        new[:, 0] = top
        new[:, 1] = np.searchsorted(confidence_edges, confidence, side="right")
        new[:, 2] = np.searchsorted(input_edges, statistic, side="right")
        new += self._offsets
        slots = (self._position + np.arange(rows)) % window
        size = len(self._counts)
        self._counts -= np.bincount(self._ring[slots].ravel(), minlength=size)
        self._counts += np.bincount(new.ravel(), minlength=size)
        self._ring[slots] = new
        self._position = (self._position + rows) % window
        self._filled = min(window, self._filled + rows)
        self._pending += rows
        if self._filled == window and self._pending >= self._update_every:
            self._pending = 0
            self._observer.on_drift(self.psi())

    def psi(self) -> dict[str, float]:
        """The window's PSI per signal (NaN until the window is full)."""
        if self._labels_only or self._filled < self._window:
            return dict.fromkeys(SIGNALS, math.nan)
        shares = np.maximum(self._counts[:-1] / self._window, PSI_FLOOR)
        reference = self._reference
        terms = (shares - reference) * np.log(shares / reference)
        sums = np.add.reduceat(terms, self._offsets)
        return {name: float(value) for name, value in zip(SIGNALS, sums, strict=True)}


def monitor_for(
    info: ModelInfo,
    observer: MonitoringObserver,
    profile_path: Path,
    window: int = DEFAULT_WINDOW,
) -> VersionMonitor | None:
    """The monitor of one loaded version: None for a model that is not a classifier (or
    `window` 0, monitoring off); without drift (one warning saying why) when its reference
    profile is missing, unreadable or not this model's."""
    classes = classifier_classes(info)
    if not classes or window < 1:
        return None
    try:
        profile = read_profile(profile_path)
        if profile is not None and profile.labels != info.labels:
            raise ProfileError(
                f"its {len(profile.labels)} labels are not the model's {len(info.labels)}"
                if len(profile.labels) != len(info.labels)
                else "its labels are not the model's"
            )
    except ProfileError as exc:
        logger.warning(
            "model %s version %s: reference profile %s not used (%s); drift monitoring is "
            "off for this version",
            info.name,
            info.version,
            profile_path,
            exc,
        )
        profile = None
    return VersionMonitor(classes, observer, profile, window)
