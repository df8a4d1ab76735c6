"""Model repositories for tests: copies of the session's model under other names and
versions, with other class names, and small non-classifier or broken models.

Real ONNX files throughout: a copy is the trained model byte for byte (metadata aside),
the regressor is a two-node graph built with `onnx`, the broken one is truncated bytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from mnist_serving_training.data import FASHION_MNIST_LABELS

MODEL_FILE = "model.onnx"
FASHION_LABELS = FASHION_MNIST_LABELS
REGRESSOR_FEATURES = 4


def add_version(
    source: Path,
    repository: Path,
    name: str,
    version: int | str,
    *,
    labels: Sequence[str] | None = None,
) -> Path:
    """Copy the model file `source` to `repository/name/version/model.onnx` (other labels)."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MODEL_FILE
    if labels is None:
        shutil.copyfile(source, target)
        return target
    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(list(labels))
    onnx.save(model, str(target))
    return target


def write_regressor(repository: Path, name: str = "regressor", version: int = 1) -> Path:
    """A non-classifier: FP32 `features` [N,4] -> `doubled` [N,4] (x * 2)."""
    features = helper.make_tensor_value_info(
        "features", TensorProto.FLOAT, ["batch", REGRESSOR_FEATURES]
    )
    doubled = helper.make_tensor_value_info(
        "doubled", TensorProto.FLOAT, ["batch", REGRESSOR_FEATURES]
    )
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["features", "two"], ["doubled"])],
        "regressor",
        [features],
        [doubled],
        initializer=[two],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MODEL_FILE
    onnx.save(model, str(target))
    return target


def write_broken(repository: Path, name: str, version: int = 1, source: Path | None = None) -> Path:
    """A model file that is not a loadable ONNX graph (truncated, or junk bytes)."""
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MODEL_FILE
    data = source.read_bytes()[:1000] if source is not None else b"not an onnx model"
    target.write_bytes(data)
    return target


def stage_version(source: Path, repository: Path, name: str, version: int) -> Path:
    """Write a version as `.staging-<version>` then rename it into place (atomic)."""
    staging = repository / name / f".staging-{version}"
    staging.mkdir(parents=True)
    shutil.copyfile(source, staging / MODEL_FILE)
    final = repository / name / str(version)
    staging.rename(final)
    return final / MODEL_FILE
