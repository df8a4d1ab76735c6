"""The companion "features" model: what the network's first convolution sees.

For a serving model ``<model>/<version>/model.onnx`` training also writes
``<model>_features/<version>/model.onnx``: input ``pixels`` uint8 [N,1,28,28] -> output
``conv1`` float32 [N,32,26,26], the first Conv + ReLU of that same graph (its
preprocessing included). It is *cut out of the exported serving graph* rather than exported
again from PyTorch, so its weights and its preprocessing are the parent's, byte for byte:
the drawing page shows the feature maps of exactly the model that classified the drawing,
and the default V2 response of the parent never grows (docs/drawing_page.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import torch

from mnist_serving_server.core.runtime import file_sha256
from mnist_serving_training.export import (
    METADATA_DATASET,
    METADATA_NORMALIZATION,
    METADATA_OPSET,
    METADATA_PRODUCER_VERSIONS,
    PARITY_BATCH_SIZE,
    PARITY_TOLERANCE,
    ExportParityError,
    ParityResult,
    set_metadata,
)
from mnist_serving_training.inference import INPUT_NAME, create_session
from mnist_serving_training.model import MnistCnn, PixelNormalizer

FEATURES_SUFFIX = "_features"
FEATURES_OUTPUT = "conv1"
BATCH_DIMENSION_NAME = "batch"

METADATA_PARENT_MODEL = "parent_model"
METADATA_PARENT_VERSION = "parent_version"
METADATA_PARENT_SHA256 = "parent_sha256"
METADATA_FEATURES = "features"
# The parent's metadata the companion keeps (labels stay out: it is not a classifier).
KEPT_PARENT_METADATA = (
    METADATA_NORMALIZATION,
    METADATA_DATASET,
    METADATA_PRODUCER_VERSIONS,
    METADATA_OPSET,
)


def features_model_name(model_name: str) -> str:
    """The repository name of ``model_name``'s companion: ``mnist`` -> ``mnist_features``."""
    return f"{model_name}{FEATURES_SUFFIX}"


def _first_conv_relu(graph: onnx.GraphProto) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    """The graph's first Conv and the Relu that consumes its output."""
    convs = [node for node in graph.node if node.op_type == "Conv"]
    if not convs:
        raise ValueError("the serving graph has no Conv node")
    conv = convs[0]
    for node in graph.node:
        if node.op_type == "Relu" and list(node.input) == [conv.output[0]]:
            return conv, node
    raise ValueError(f"the first Conv ({conv.name}) is not followed by a Relu")


def build_features_model(parent: onnx.ModelProto) -> onnx.ModelProto:
    """Cut ``pixels`` -> first Conv + ReLU out of the serving graph; name its output ``conv1``."""
    conv, relu = _first_conv_relu(parent.graph)
    extracted = onnx.utils.Extractor(parent).extract_model([INPUT_NAME], [relu.output[0]])
    graph = extracted.graph
    old_name = relu.output[0]
    for node in graph.node:
        node.output[:] = [FEATURES_OUTPUT if name == old_name else name for name in node.output]
    weight = next(init for init in parent.graph.initializer if init.name == conv.input[1])
    channels = int(weight.dims[0])
    kernel = tuple(int(d) for d in weight.dims[2:])
    input_dims = [d.dim_value for d in parent.graph.input[0].type.tensor_type.shape.dim[2:]]
    side = [size - k + 1 for size, k in zip(input_dims, kernel, strict=True)]
    del graph.output[:]
    graph.output.append(
        onnx.helper.make_tensor_value_info(
            FEATURES_OUTPUT, onnx.TensorProto.FLOAT, [BATCH_DIMENSION_NAME, channels, *side]
        )
    )
    # Keep only what the cut graph uses, and no stale intermediate shapes.
    del graph.value_info[:]
    graph.name = f"{parent.graph.name or 'main_graph'}{FEATURES_SUFFIX}"
    return extracted


def write_features_model(
    parent_path: Path, path: Path, *, parent_model: str, parent_version: int
) -> None:
    """Write the companion of the serving model at ``parent_path`` to ``path``."""
    parent = onnx.load(str(parent_path))
    companion = build_features_model(parent)
    parent_metadata = {prop.key: prop.value for prop in parent.metadata_props}
    conv, _ = _first_conv_relu(parent.graph)
    metadata = {key: parent_metadata[key] for key in KEPT_PARENT_METADATA if key in parent_metadata}
    metadata.update(
        {
            METADATA_PARENT_MODEL: parent_model,
            METADATA_PARENT_VERSION: str(parent_version),
            METADATA_PARENT_SHA256: file_sha256(parent_path),
            METADATA_FEATURES: json.dumps(
                {
                    "output": FEATURES_OUTPUT,
                    "layer": "first convolution + ReLU",
                    "node": conv.name,
                    "weights": conv.input[1],
                }
            ),
        }
    )
    del companion.metadata_props[:]
    set_metadata(companion, metadata)
    onnx.checker.check_model(companion, full_check=True)
    onnx.save(companion, str(path), save_as_external_data=False)


def torch_conv1(cnn: MnistCnn, images: np.ndarray) -> np.ndarray:
    """PyTorch's first Conv + ReLU for uint8 images [N,28,28]: float32 [N,32,26,26]."""
    normalizer = PixelNormalizer()
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)).unsqueeze(1)
    with torch.no_grad():
        outputs = [
            cnn.relu1(cnn.conv1(normalizer(pixels[start : start + PARITY_BATCH_SIZE])))
            for start in range(0, len(pixels), PARITY_BATCH_SIZE)
        ]
    return torch.cat(outputs).numpy()


def onnx_conv1(path: Path, images: np.ndarray) -> np.ndarray:
    """The companion model's ``conv1`` for uint8 images [N,28,28], in ONNX Runtime."""
    session = create_session(path)
    pixels = np.ascontiguousarray(images, dtype=np.uint8)[:, np.newaxis]
    batches = [
        session.run([FEATURES_OUTPUT], {INPUT_NAME: pixels[start : start + PARITY_BATCH_SIZE]})[0]
        for start in range(0, len(pixels), PARITY_BATCH_SIZE)
    ]
    return np.concatenate(batches)


def check_features_parity(
    path: Path, cnn: MnistCnn, images: np.ndarray, tolerance: float = PARITY_TOLERANCE
) -> ParityResult:
    """The companion's ``conv1`` against PyTorch's first layer; ExportParityError if apart."""
    expected = torch_conv1(cnn, images)
    actual = onnx_conv1(path, images)
    if actual.shape != expected.shape:
        raise ExportParityError(f"{path}: conv1 shape {actual.shape} != PyTorch {expected.shape}")
    result = ParityResult(
        max_abs_diff=float(np.max(np.abs(expected - actual))) if len(images) else 0.0,
        argmax_mismatches=0,
        images=len(images),
    )
    if result.max_abs_diff > tolerance:
        raise ExportParityError(
            f"{path}: the features model disagrees with PyTorch's first layer on "
            f"{result.images} images: max |diff| = {result.max_abs_diff:.3g} "
            f"(tolerance {tolerance:g})"
        )
    return result
