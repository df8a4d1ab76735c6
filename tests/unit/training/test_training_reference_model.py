"""The reference model that ships in model_repository/mnist/1, against today's export.

`make serve` on a fresh clone serves this file without installing torch, so it must be what
`make train-export` would write now in every contract a client or the server relies on:
input and output names, dtypes and shapes, opset, metadata keys, class labels and
normalisation, the layer shapes. Its weights come from a seeded run on the offline MNIST
sample (`make reference-model`) and must still classify the 1,000 held-out digits at >= 96%.
When the export changes, these tests fail and say how to regenerate it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from mnist_serving_server.core.runtime import file_sha256
from mnist_serving_training.data import MNIST_LABELS
from mnist_serving_training.export import (
    METADATA_DATASET,
    METADATA_LABELS,
    METADATA_NORMALIZATION,
    METADATA_OPSET,
    METADATA_TEST_ACCURACY,
    build_metadata,
    export_onnx,
)
from mnist_serving_training.inference import create_session, predict_probabilities
from mnist_serving_training.model import MnistCnn
from mnist_serving_training.report import CONFUSION_MATRIX_PLOT, LOSS_ACCURACY_PLOT, REPORT_FILENAME
from mnist_serving_training.repository import MODEL_FILENAME

REPO_ROOT = Path(__file__).resolve().parents[3]
REFERENCE_DIR = REPO_ROOT / "model_repository" / "mnist" / "1"
REFERENCE_DATASET = "mnist-sample"
REFERENCE_EPOCHS = 40
REFERENCE_SEED = 0
# What `make reference-model` runs (Makefile: REFERENCE_MODEL_ARGS); the report records it.
REFERENCE_MAKE_COMMAND = (
    f"make train-export DATASET={REFERENCE_DATASET} EPOCHS={REFERENCE_EPOCHS} "
    f"SEED={REFERENCE_SEED} QUANTIZE=none MODEL_NAME=mnist MODEL_REPOSITORY=model_repository "
    "VERSION=1"
)
REGENERATE = (
    "The shipped reference model is stale: regenerate it with `make reference-model` "
    f"(= `{REFERENCE_MAKE_COMMAND}`) and commit what .gitignore lets through in "
    "model_repository/mnist/1/ (model, report, plots; not the state_dict)."
)
SHIPPED_FILES = (MODEL_FILENAME, REPORT_FILENAME, LOSS_ACCURACY_PLOT, CONFUSION_MATRIX_PLOT)
# Small enough to commit (the weights are ~0.9 MB of float32).
MAX_MODEL_BYTES = 2 * 1024 * 1024
MIN_HELD_OUT_ACCURACY = 0.96
SYMBOLIC = "symbolic"
DEFAULT_DOMAINS = ("", "ai.onnx")


def _tensor_contract(values: Any) -> list[tuple[str, str, list[int | str]]]:
    """(name, dtype, shape) per graph input or output; any symbolic dimension reads 'symbolic'."""
    contract = []
    for value in values:
        tensor = value.type.tensor_type
        shape: list[int | str] = [
            SYMBOLIC if dim.dim_param or not dim.HasField("dim_value") else dim.dim_value
            for dim in tensor.shape.dim
        ]
        contract.append((value.name, onnx.TensorProto.DataType.Name(tensor.elem_type), shape))
    return contract


def _parameter_shapes(model: onnx.ModelProto) -> list[list[int]]:
    """The shapes of the weight tensors (two or more dimensions): the architecture."""
    return sorted(list(init.dims) for init in model.graph.initializer if len(init.dims) >= 2)


def contracts(path: Path) -> dict[str, Any]:
    """Everything of an exported model that the server, clients and the tests rely on."""
    model = onnx.load(str(path))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    return {
        "inputs": _tensor_contract(model.graph.input),
        "outputs": _tensor_contract(model.graph.output),
        "opset": max(o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS),
        "metadata keys": sorted(metadata),
        "metadata labels": json.loads(metadata[METADATA_LABELS]),
        "metadata normalization": json.loads(metadata[METADATA_NORMALIZATION]),
        "metadata opset": metadata[METADATA_OPSET],
        "metadata dataset": metadata[METADATA_DATASET],
        "parameter shapes": _parameter_shapes(model),
    }


@pytest.fixture(scope="module")
def current_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained network through today's export path: the contracts do not depend on weights."""
    torch.manual_seed(REFERENCE_SEED)
    path = tmp_path_factory.mktemp("current_export") / MODEL_FILENAME
    export_onnx(MnistCnn().eval(), path, build_metadata(MNIST_LABELS, 0.0, REFERENCE_DATASET))
    return path


@pytest.fixture(scope="module")
def reference_report() -> dict[str, Any]:
    report: dict[str, Any] = json.loads((REFERENCE_DIR / REPORT_FILENAME).read_text())
    return report


def test_the_reference_model_ships_with_its_report_and_plots() -> None:
    assert REFERENCE_DIR.is_dir(), REGENERATE
    present = {p.name for p in REFERENCE_DIR.iterdir()}
    assert present >= set(SHIPPED_FILES), REGENERATE
    assert (REFERENCE_DIR / MODEL_FILENAME).stat().st_size <= MAX_MODEL_BYTES


def test_reference_model_matches_the_current_export(current_export: Path) -> None:
    shipped = contracts(REFERENCE_DIR / MODEL_FILENAME)
    current = contracts(current_export)
    differing = {
        key: {"shipped": shipped[key], "current export": current[key]}
        for key in current
        if shipped[key] != current[key]
    }
    assert not differing, f"{REGENERATE}\nContracts that differ: {differing}"


def test_reference_report_records_the_command_and_the_file(
    reference_report: dict[str, Any],
) -> None:
    assert reference_report.get("make_command") == REFERENCE_MAKE_COMMAND, REGENERATE
    assert reference_report["dataset"] == REFERENCE_DATASET
    assert reference_report["epochs"] == REFERENCE_EPOCHS
    assert reference_report["seed"] == REFERENCE_SEED
    assert reference_report["labels"] == list(MNIST_LABELS)
    assert reference_report["export_parity"]["argmax_mismatches"] == 0
    # The report describes this very file (not one trained since).
    assert reference_report["model_sha256"] == file_sha256(REFERENCE_DIR / MODEL_FILENAME), (
        REGENERATE
    )
    model = onnx.load(str(REFERENCE_DIR / MODEL_FILENAME))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert float(metadata[METADATA_TEST_ACCURACY]) == pytest.approx(
        reference_report["test_accuracy"], abs=1e-6
    )


def test_reference_model_classifies_the_held_out_digits(
    sample_digits: tuple[np.ndarray, np.ndarray], reference_report: dict[str, Any]
) -> None:
    images, labels = sample_digits
    probabilities = predict_probabilities(create_session(REFERENCE_DIR / MODEL_FILENAME), images)
    correct = int(np.sum(probabilities.argmax(axis=1) == labels))
    assert correct / len(labels) >= MIN_HELD_OUT_ACCURACY, REGENERATE
    # ONNX Runtime agrees with the PyTorch evaluation the report holds, digit for digit.
    assert correct == round(reference_report["test_accuracy"] * len(labels))
