"""The companion features model (<model>_features): the first Conv + ReLU of the serving graph.

- cut out of a freshly exported model, its ``conv1`` equals PyTorch's first layer on real
  digits within 1e-5, with the contract the drawing page relies on;
- the one that ships in model_repository/mnist_features/1 is exactly what the cut of the
  shipped model_repository/mnist/1 writes today, and its ``conv1`` equals the first layer of
  a PyTorch network loaded with the shipped ONNX weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from mnist_serving_server.core.runtime import file_sha256
from mnist_serving_training.data import IMAGE_SIDE, DatasetSplit
from mnist_serving_training.export import (
    PARITY_TOLERANCE,
    ExportParityError,
    build_metadata,
    export_onnx,
)
from mnist_serving_training.features import (
    FEATURES_OUTPUT,
    check_features_parity,
    features_model_name,
    onnx_conv1,
    torch_conv1,
    write_features_model,
)
from mnist_serving_training.model import CONV1_CHANNELS, CONV_KERNEL_SIZE, MnistCnn

REPO_ROOT = Path(__file__).resolve().parents[3]
SHIPPED_PARENT = REPO_ROOT / "model_repository" / "mnist" / "1" / "model.onnx"
SHIPPED_FEATURES = REPO_ROOT / "model_repository" / "mnist_features" / "1" / "model.onnx"
FEATURE_SIDE = IMAGE_SIDE - CONV_KERNEL_SIZE + 1
PARITY_IMAGES = 200
INIT_SEED = 7
REGENERATE = (
    "model_repository/mnist_features/1/model.onnx is stale: regenerate it from the shipped "
    "parent with `python -c 'from pathlib import Path; from mnist_serving_training.features "
    'import write_features_model as w; w(Path("model_repository/mnist/1/model.onnx"), '
    'Path("model_repository/mnist_features/1/model.onnx"), parent_model="mnist", '
    "parent_version=1)'` (docs/drawing_page.md)"
)


@pytest.fixture(scope="module")
def exported(
    mnist_sample: DatasetSplit, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, MnistCnn]:
    """A seeded (untrained) CNN exported as a serving model, and its companion."""
    torch.manual_seed(INIT_SEED)
    cnn = MnistCnn().eval()
    folder = tmp_path_factory.mktemp("features")
    parent = folder / "model.onnx"
    export_onnx(cnn, parent, build_metadata(mnist_sample.labels, 0.1, mnist_sample.name))
    companion = folder / "features.onnx"
    write_features_model(parent, companion, parent_model="digits", parent_version=3)
    return parent, companion, cnn


def test_companion_name() -> None:
    assert features_model_name("mnist") == "mnist_features"


def test_conv1_equals_pytorch_first_layer_on_real_digits(
    exported: tuple[Path, Path, MnistCnn], mnist_sample: DatasetSplit
) -> None:
    _, companion, cnn = exported
    images = mnist_sample.test_images[:PARITY_IMAGES]
    expected = torch_conv1(cnn, images)
    actual = onnx_conv1(companion, images)
    assert actual.shape == (PARITY_IMAGES, CONV1_CHANNELS, FEATURE_SIDE, FEATURE_SIDE)
    assert actual.dtype == np.float32
    assert float(np.max(np.abs(expected - actual))) <= PARITY_TOLERANCE
    # Real digits light up real feature maps (ReLU: nothing negative).
    assert float(actual.min()) >= 0.0
    assert float(actual.max()) > 0.1
    assert check_features_parity(companion, cnn, images).max_abs_diff <= PARITY_TOLERANCE


def test_parity_check_catches_another_network(
    exported: tuple[Path, Path, MnistCnn], mnist_sample: DatasetSplit
) -> None:
    _, companion, _ = exported
    torch.manual_seed(INIT_SEED + 1)
    with pytest.raises(ExportParityError, match="first layer"):
        check_features_parity(companion, MnistCnn().eval(), mnist_sample.test_images[:20])


def test_contract_and_metadata(exported: tuple[Path, Path, MnistCnn]) -> None:
    parent, companion, _ = exported
    model = onnx.load(str(companion))
    (graph_input,) = model.graph.input
    assert graph_input.name == "pixels"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    in_dims = graph_input.type.tensor_type.shape.dim
    assert in_dims[0].dim_param
    assert [d.dim_value for d in in_dims[1:]] == [1, IMAGE_SIDE, IMAGE_SIDE]
    (graph_output,) = model.graph.output
    assert graph_output.name == FEATURES_OUTPUT
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    out_dims = graph_output.type.tensor_type.shape.dim
    assert out_dims[0].dim_param
    assert [d.dim_value for d in out_dims[1:]] == [CONV1_CHANNELS, FEATURE_SIDE, FEATURE_SIDE]
    assert [node.op_type for node in model.graph.node][-2:] == ["Conv", "Relu"]
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert metadata["parent_model"] == "digits"
    assert metadata["parent_version"] == "3"
    assert metadata["parent_sha256"] == file_sha256(parent)
    assert "labels" not in metadata  # not a classifier
    assert json.loads(metadata["features"])["output"] == FEATURES_OUTPUT
    parent_metadata = {p.key: p.value for p in onnx.load(str(parent)).metadata_props}
    assert metadata["normalization"] == parent_metadata["normalization"]


def test_batch_dimension_is_dynamic(exported: tuple[Path, Path, MnistCnn]) -> None:
    _, companion, _ = exported
    for batch in (1, 5):
        out = onnx_conv1(companion, np.zeros((batch, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8))
        assert out.shape == (batch, CONV1_CHANNELS, FEATURE_SIDE, FEATURE_SIDE)


def test_shipped_companion_is_the_cut_of_the_shipped_model(tmp_path: Path) -> None:
    regenerated = tmp_path / "model.onnx"
    write_features_model(SHIPPED_PARENT, regenerated, parent_model="mnist", parent_version=1)
    assert regenerated.read_bytes() == SHIPPED_FEATURES.read_bytes(), REGENERATE
    metadata = {p.key: p.value for p in onnx.load(str(SHIPPED_FEATURES)).metadata_props}
    assert metadata["parent_sha256"] == file_sha256(SHIPPED_PARENT), REGENERATE


def test_shipped_companion_matches_its_parent_weights(mnist_sample: DatasetSplit) -> None:
    """A PyTorch CNN loaded with the shipped ONNX weights: its first layer is the companion's."""
    parent = onnx.load(str(SHIPPED_PARENT))
    weights = {
        init.name.removeprefix("cnn."): torch.from_numpy(numpy_helper.to_array(init).copy())
        for init in parent.graph.initializer
        if init.name.startswith("cnn.")
    }
    cnn = MnistCnn().eval()
    cnn.load_state_dict(weights)
    result = check_features_parity(SHIPPED_FEATURES, cnn, mnist_sample.test_images)
    assert result.images == len(mnist_sample.test_images)
    assert result.max_abs_diff <= PARITY_TOLERANCE
