"""ONNX export of the serving graph, its metadata, and the parity check against PyTorch."""

from __future__ import annotations

import importlib.metadata
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from mnist_serving_training.data import IMAGE_SIDE
from mnist_serving_training.inference import (
    INPUT_NAME,
    LOGITS_OUTPUT,
    PROBABILITIES_OUTPUT,
    create_session,
    predict_probabilities,
)
from mnist_serving_training.model import (
    INPUT_CHANNELS,
    NORMALIZATION_MEAN,
    NORMALIZATION_STD,
    MnistCnn,
    ServingModel,
)

logger = logging.getLogger(__name__)

OPSET_VERSION = 18
OUTPUT_NAMES = (PROBABILITIES_OUTPUT, LOGITS_OUTPUT)
BATCH_DIMENSION_NAME = "batch"
# The example batch for tracing: larger than 1 so the exporter cannot specialise the
# batch dimension to a constant.
EXAMPLE_BATCH_SIZE = 2

# The export fails if ONNX Runtime and PyTorch disagree by more than this on any probability.
PARITY_TOLERANCE = 1e-5
PARITY_BATCH_SIZE = 1_000

# The distributions whose versions go into the report and the model's metadata.
PRODUCER_DISTRIBUTIONS = ("torch", "onnx", "onnxscript", "onnxruntime", "numpy", "torchvision")

METADATA_LABELS = "labels"
METADATA_NORMALIZATION = "normalization"
METADATA_TEST_ACCURACY = "test_accuracy"
METADATA_DATASET = "dataset"
METADATA_PRODUCER_VERSIONS = "producer_versions"
METADATA_OPSET = "opset"

# Node annotations of the dynamo exporter that name files of the machine that exported
# (absolute source paths of every traced line): dropped, so a shipped model is the same file
# wherever it was trained. The other annotations (module names, scopes) stay.
MACHINE_SPECIFIC_NODE_METADATA = ("pkg.torch.onnx.stack_trace",)


class ExportParityError(RuntimeError):
    """The exported graph does not reproduce PyTorch's outputs."""


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float
    argmax_mismatches: int
    images: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportInfo:
    exporter: str
    opset: int


def producer_versions() -> dict[str, str]:
    """Installed versions of the libraries that produced the model."""
    versions: dict[str, str] = {}
    for distribution in PRODUCER_DISTRIBUTIONS:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def normalization() -> dict[str, float]:
    return {"mean": NORMALIZATION_MEAN, "std": NORMALIZATION_STD}


def build_metadata(labels: tuple[str, ...], test_accuracy: float, dataset: str) -> dict[str, str]:
    """The ``metadata_props`` the server reports (all values are strings, JSON where structured)."""
    return {
        METADATA_LABELS: json.dumps(list(labels)),
        METADATA_NORMALIZATION: json.dumps(normalization()),
        METADATA_TEST_ACCURACY: f"{test_accuracy:.6f}",
        METADATA_DATASET: dataset,
        METADATA_PRODUCER_VERSIONS: json.dumps(producer_versions(), sort_keys=True),
        METADATA_OPSET: str(OPSET_VERSION),
    }


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace or add ``metadata_props`` entries, keeping the others."""
    kept = [prop for prop in model.metadata_props if prop.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every subgraph inside its nodes' attributes."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]
            for subgraph in subgraphs:
                found.extend(_graphs(subgraph))
    return found


def strip_machine_specific_metadata(model: onnx.ModelProto) -> int:
    """Drop the nodes' source-path annotations (see above); return how many were dropped."""
    nodes = [node for graph in _graphs(model.graph) for node in graph.node]
    nodes += [node for function in model.functions for node in function.node]
    dropped = 0
    for node in nodes:
        kept = [p for p in node.metadata_props if p.key not in MACHINE_SPECIFIC_NODE_METADATA]
        dropped += len(node.metadata_props) - len(kept)
        del node.metadata_props[:]
        node.metadata_props.extend(kept)
    return dropped


def read_metadata(path: Path) -> dict[str, str]:
    model = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def _example_input() -> torch.Tensor:
    return torch.zeros(
        EXAMPLE_BATCH_SIZE, INPUT_CHANNELS, IMAGE_SIDE, IMAGE_SIDE, dtype=torch.uint8
    )


def _export_dynamo(serving: ServingModel) -> onnx.ModelProto:
    program = torch.onnx.export(
        serving,
        (_example_input(),),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim(BATCH_DIMENSION_NAME)}},
        opset_version=OPSET_VERSION,
        verbose=False,
    )
    if program is None:  # pragma: no cover - dynamo export always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    proto: onnx.ModelProto = program.model_proto
    return proto


def _export_legacy(serving: ServingModel, path: Path) -> onnx.ModelProto:
    batch_axis = {0: BATCH_DIMENSION_NAME}
    torch.onnx.export(
        serving,
        (_example_input(),),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={name: batch_axis for name in (INPUT_NAME, *OUTPUT_NAMES)},
        opset_version=OPSET_VERSION,
    )
    return onnx.load(str(path))


def export_onnx(cnn: MnistCnn, path: Path, metadata: Mapping[str, str]) -> ExportInfo:
    """Write the serving graph (uint8 pixels -> probabilities, logits) to ONE ``.onnx`` file.

    Uses the dynamo exporter; falls back to the legacy TorchScript exporter (with a
    warning) only if dynamo fails. Weights are always stored inside the file.
    """
    serving = ServingModel(cnn).eval()
    exporter = "dynamo"
    try:
        proto = _export_dynamo(serving)
    except Exception as error:
        logger.warning("dynamo ONNX export failed (%s); falling back to the legacy exporter", error)
        exporter = "legacy"
        proto = _export_legacy(serving, path)
    set_metadata(proto, metadata)
    strip_machine_specific_metadata(proto)
    onnx.checker.check_model(proto)
    # save_as_external_data=False keeps the weights inside model.onnx (no .data sidecar).
    onnx.save(proto, str(path), save_as_external_data=False)
    return ExportInfo(exporter=exporter, opset=OPSET_VERSION)


def torch_probabilities(cnn: MnistCnn, images: np.ndarray) -> np.ndarray:
    """PyTorch's probabilities for uint8 images [N,28,28] through the serving wrapper."""
    serving = ServingModel(cnn).eval()
    pixels = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)
    with torch.no_grad():
        outputs = [
            serving(pixels[start : start + PARITY_BATCH_SIZE])[0]
            for start in range(0, len(pixels), PARITY_BATCH_SIZE)
        ]
    return torch.cat(outputs).numpy()


def check_export_parity(
    path: Path, cnn: MnistCnn, images: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> ParityResult:
    """Run the exported model in ONNX Runtime and compare with PyTorch on ``images``.

    Raises ExportParityError if any probability differs by more than ``tolerance`` or any
    predicted class differs.
    """
    expected = torch_probabilities(cnn, images)
    actual = predict_probabilities(create_session(path), images)
    if actual.shape != expected.shape:
        raise ExportParityError(
            f"{path}: ONNX output shape {actual.shape} != PyTorch {expected.shape}"
        )
    result = ParityResult(
        max_abs_diff=float(np.max(np.abs(expected - actual))) if len(images) else 0.0,
        argmax_mismatches=int(np.sum(expected.argmax(axis=1) != actual.argmax(axis=1))),
        images=len(images),
    )
    if result.max_abs_diff > tolerance or result.argmax_mismatches:
        raise ExportParityError(
            f"{path}: ONNX Runtime disagrees with PyTorch on {result.images} images: "
            f"max |p_torch - p_onnx| = {result.max_abs_diff:.3g} (tolerance {tolerance:g}), "
            f"{result.argmax_mismatches} predicted classes differ"
        )
    return result
