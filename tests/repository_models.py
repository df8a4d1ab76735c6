"""Model repositories for tests: the session's model under other names and versions, with
other class names, and small non-classifier or broken models.

Real ONNX files throughout. Version 1 (and any folder that is not a number) is the trained
model byte for byte (metadata aside). Every other version N is that model with one node
added, `logits / N**2` before the softmax: the same labels (a positive scale keeps the
argmax), other probabilities. So a test can tell from an answer's probabilities which
version computed it (`reference_probabilities`, `answered_by`), not only from the version
string the server reports. The regressor is a two-node graph built with `onnx`, the broken
one is truncated bytes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from mnist_serving_training.data import FASHION_MNIST_LABELS

MODEL_FILE = "model.onnx"
FASHION_LABELS = FASHION_MNIST_LABELS
REGRESSOR_FEATURES = 4
LOGITS = "logits"
PROBABILITIES = "probabilities"
# Far below the gap between two versions' probabilities (on the 1,000 mnist-sample test
# digits, versions 1, 2, 3 and 5 differ by at least 0.012 in some class of every digit),
# far above float32 noise between batch sizes and runtimes (1e-6).
VERSION_ATOL = 1e-4


def logit_scale(version: int | str) -> float | None:
    """What add_version scales version `version`'s logits by (None: an unchanged copy)."""
    if not str(version).isdigit() or int(version) == 1:
        return None
    return 1.0 / int(version) ** 2


def write_model(
    source: Path, target: Path, *, labels: Sequence[str] | None, scale: float | None
) -> None:
    """`source` with other labels and/or its logits scaled by `scale` (a Mul node)."""
    if labels is None and scale is None:
        shutil.copyfile(source, target)
        return
    model = onnx.load(str(source))
    if labels is not None:
        for prop in model.metadata_props:
            if prop.key == "labels":
                prop.value = json.dumps(list(labels))
    if scale is not None:
        scale_logits(model, scale)
    onnx.save(model, str(target))


def scale_logits(model: onnx.ModelProto, scale: float) -> None:
    """Rename the node output `logits` to `logits_unscaled` and add `logits = it * scale`.

    The softmax (and the graph output `logits`) then read the scaled tensor, so both outputs
    change and the argmax does not.
    """
    graph = model.graph
    producers = [node for node in graph.node if LOGITS in node.output]
    assert len(producers) == 1, f"expected one node that writes {LOGITS!r}"
    unscaled = f"{LOGITS}_unscaled"
    producer = producers[0]
    producer.output[list(producer.output).index(LOGITS)] = unscaled
    graph.initializer.append(helper.make_tensor("logit_scale", TensorProto.FLOAT, [], [scale]))
    mul = helper.make_node("Mul", [unscaled, "logit_scale"], [LOGITS], name="scale_logits")
    position = list(graph.node).index(producer) + 1
    graph.node.insert(position, mul)
    onnx.checker.check_model(model)


def reference_probabilities(model_file: Path, images: np.ndarray) -> np.ndarray:
    """The `probabilities` output of `model_file` for uint8 images [n,28,28], straight ORT."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    pixels = np.ascontiguousarray(images, dtype=np.uint8).reshape(-1, 1, 28, 28)
    (result,) = session.run([PROBABILITIES], {input_name: pixels})
    return np.asarray(result, dtype=np.float32)


def answered_by(served: np.ndarray, references: dict[str, np.ndarray]) -> str:
    """Which version's reference probabilities `served` equals (an AssertionError if none).

    `references` maps a version to its probabilities for the same images, in order.
    """
    matches = [
        version
        for version, expected in references.items()
        if expected.shape == served.shape and np.allclose(served, expected, atol=VERSION_ATOL)
    ]
    assert len(matches) == 1, f"probabilities match versions {matches} of {sorted(references)}"
    return matches[0]


def add_version(
    source: Path,
    repository: Path,
    name: str,
    version: int | str,
    *,
    labels: Sequence[str] | None = None,
) -> Path:
    """Write `repository/name/version/model.onnx` from `source` (other labels, if given).

    Version 1 is a copy; version N > 1 scales the logits by 1/N**2 (`logit_scale`).
    """
    folder = repository / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / MODEL_FILE
    write_model(source, target, labels=labels, scale=logit_scale(version))
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
    """Write a version as `.staging-<version>` then rename it into place (atomic).

    The model is what add_version writes for `version` (its logits scaled unless it is 1).
    """
    staging = repository / name / f".staging-{version}"
    staging.mkdir(parents=True)
    write_model(source, staging / MODEL_FILE, labels=None, scale=logit_scale(version))
    final = repository / name / str(version)
    staging.rename(final)
    return final / MODEL_FILE
