"""The exported graph: names, dtypes, dynamic batch, metadata, one file, parity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from mnist_serving_training.data import IMAGE_SIDE, NUM_CLASSES, DatasetSplit
from mnist_serving_training.export import (
    OPSET_VERSION,
    ExportParityError,
    build_metadata,
    check_export_parity,
    export_onnx,
)
from mnist_serving_training.inference import create_session
from mnist_serving_training.model import NORMALIZATION_MEAN, NORMALIZATION_STD, MnistCnn
from mnist_serving_training.train import TrainConfig, train

DYNAMIC_BATCH_SIZES = (1, 37)
MIN_OPSET = 18
ALTERED_INITIALIZER = "cnn.fc2.bias"
BIAS_SHIFT = 3.0
PROBABILITY_SUM_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exported(
    small_split: DatasetSplit, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, MnistCnn]:
    cnn = train(small_split, TrainConfig(epochs=1, show_progress=False)).model
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    export_onnx(cnn, path, build_metadata(small_split.labels, 0.5, small_split.name))
    return path, cnn


def test_graph_interface(exported: tuple[Path, MnistCnn]) -> None:
    path, _ = exported
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= MIN_OPSET
    (graph_input,) = model.graph.input
    assert graph_input.name == "pixels"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param  # symbolic batch dimension
    assert [d.dim_value for d in dims[1:]] == [1, IMAGE_SIDE, IMAGE_SIDE]
    outputs = {o.name: o for o in model.graph.output}
    assert list(outputs) == ["probabilities", "logits"]
    for output in outputs.values():
        assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        out_dims = output.type.tensor_type.shape.dim
        assert out_dims[0].dim_param
        assert out_dims[1].dim_value == NUM_CLASSES


def test_single_file_with_metadata(exported: tuple[Path, MnistCnn]) -> None:
    path, _ = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    model = onnx.load(str(path), load_external_data=False)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(metadata["labels"]) == [str(d) for d in range(NUM_CLASSES)]
    assert json.loads(metadata["normalization"]) == {
        "mean": NORMALIZATION_MEAN,
        "std": NORMALIZATION_STD,
    }
    assert float(metadata["test_accuracy"]) == pytest.approx(0.5)
    assert metadata["dataset"] == "mnist-sample"
    assert metadata["opset"] == str(OPSET_VERSION)
    assert {"torch", "onnx", "onnxruntime"} <= set(json.loads(metadata["producer_versions"]))


@pytest.mark.parametrize("batch", DYNAMIC_BATCH_SIZES)
def test_dynamic_batch_runs_in_onnxruntime(
    exported: tuple[Path, MnistCnn], small_split: DatasetSplit, batch: int
) -> None:
    path, _ = exported
    pixels = small_split.test_images[:batch, np.newaxis]
    probabilities, logits = create_session(path).run(None, {"pixels": pixels})
    assert probabilities.shape == (batch, NUM_CLASSES)
    assert logits.shape == (batch, NUM_CLASSES)
    assert probabilities.dtype == np.float32
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE)
    assert np.array_equal(probabilities.argmax(axis=1), logits.argmax(axis=1))


def test_parity_passes_on_the_exported_graph(
    exported: tuple[Path, MnistCnn], small_split: DatasetSplit
) -> None:
    path, cnn = exported
    result = check_export_parity(path, cnn, small_split.test_images)
    assert result.images == small_split.test_size
    assert result.argmax_mismatches == 0
    assert result.max_abs_diff <= 1e-5


def test_parity_rejects_an_altered_graph(
    exported: tuple[Path, MnistCnn], small_split: DatasetSplit, tmp_path: Path
) -> None:
    path, cnn = exported
    model = onnx.load(str(path))
    (bias,) = [i for i in model.graph.initializer if i.name == ALTERED_INITIALIZER]
    values = onnx.numpy_helper.to_array(bias).copy()
    values[0] += BIAS_SHIFT  # favour class 0: probabilities and predictions change
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    altered = tmp_path / "altered.onnx"
    onnx.save(model, str(altered))
    with pytest.raises(ExportParityError, match="disagrees with PyTorch"):
        check_export_parity(altered, cnn, small_split.test_images)
