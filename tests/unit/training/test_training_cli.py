"""The command line end to end on a small IDX dataset, and the version folders it writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import onnx
import pytest

from mnist_serving_server.core.repository import is_version_name
from mnist_serving_training.cli import main
from mnist_serving_training.data import DatasetSplit
from mnist_serving_training.repository import next_free_version, staged_version
from tests.unit.training.idx_writer import write_idx_dir

CLI_FLAGS = (
    "--dataset",
    "--epochs",
    "--seed",
    "--batch-size",
    "--lr",
    "--output-dir",
    "--model-name",
    "--version",
    "--quantize",
    "--no-plots",
    "--no-features-model",
    "--data-dir",
)
REPORT_KEYS = {
    "dataset",
    "dataset_description",
    "train_size",
    "test_size",
    "epochs",
    "batch_size",
    "learning_rate",
    "seed",
    "history",
    "test_accuracy",
    "per_class_accuracy",
    "confusion_matrix",
    "labels",
    "versions",
    "wall_time_s",
    "export_parity",
    "model_sha256",
    "model_path",
}
CLI_TRAIN_COUNT = 300
CLI_TEST_COUNT = 100
EXIT_USAGE = 2


def test_help_lists_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    missing = [flag for flag in CLI_FLAGS if flag not in text]
    assert not missing
    assert "fashion-mnist" in text
    assert "idx:DIR" in text


def test_unknown_dataset_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--dataset", "cifar10"])
    assert exited.value.code == EXIT_USAGE
    assert "cifar10" in capsys.readouterr().err


def test_cli_writes_fp32_and_int8_versions(tmp_path: Path, small_split: DatasetSplit) -> None:
    idx_dir = tmp_path / "idx"
    write_idx_dir(idx_dir, small_split, True, CLI_TRAIN_COUNT, CLI_TEST_COUNT)
    repository = tmp_path / "repo"
    argv = ["--dataset", f"idx:{idx_dir}", "--epochs", "1", "--seed", "3"]
    argv += ["--output-dir", str(repository), "--model-name", "digits", "--quantize", "int8"]
    assert main(argv) == 0

    fp32_dir = repository / "digits" / "1"
    assert sorted(p.name for p in fp32_dir.iterdir()) == [
        "confusion_matrix.png",
        "loss_accuracy.png",
        "model.onnx",
        "model_state_dict.pt",
        "reference_profile.json",
        "training_report.json",
    ]
    report: dict[str, Any] = json.loads((fp32_dir / "training_report.json").read_text())
    # The reference profile the server compares traffic with: in the folder and the report.
    profile = json.loads((fp32_dir / "reference_profile.json").read_text())
    assert report["reference_profile"] == profile
    assert profile["images"] == CLI_TEST_COUNT
    assert sum(profile["signals"]["label"]["shares"]) == pytest.approx(1.0)
    assert set(report) >= REPORT_KEYS
    assert report["train_size"] == CLI_TRAIN_COUNT
    assert report["test_size"] == CLI_TEST_COUNT
    assert report["seed"] == 3
    assert len(report["history"]) == 1
    assert report["export_parity"]["argmax_mismatches"] == 0
    assert report["export_parity"]["images"] == CLI_TEST_COUNT
    assert sum(map(sum, report["confusion_matrix"])) == CLI_TEST_COUNT
    # Relative to the model repository: nothing of the machine that trained it.
    assert report["model_path"] == "digits/1/model.onnx"
    assert report["augmentation"] is None  # auto: an idx: folder is not augmented
    assert report["transformed_test"]["transform"]["rotation_degrees"] == 15.0

    int8_dir = repository / "digits" / "2"
    assert sorted(p.name for p in int8_dir.iterdir()) == [
        "model.onnx",
        "reference_profile.json",
        "training_report.json",
    ]
    int8_report = json.loads((int8_dir / "training_report.json").read_text())
    assert int8_report["reference_profile"]["images"] == CLI_TEST_COUNT
    quantization = int8_report["quantization"]
    assert quantization["fp32_version"] == 1
    assert quantization["fp32_test_accuracy"] == pytest.approx(report["test_accuracy"])
    metadata = {p.key: p.value for p in onnx.load(str(int8_dir / "model.onnx")).metadata_props}
    assert metadata["ort_disabled_optimizers"] == "QDQPropagationTransformer"
    assert metadata["labels"] == json.dumps(report["labels"])
    # Nothing half-written is left behind.
    assert sorted(p.name for p in (repository / "digits").iterdir()) == ["1", "2"]
    # The companion features model of the FP32 version (the drawing page's feature maps).
    features_dir = repository / "digits_features"
    assert sorted(p.name for p in features_dir.iterdir()) == ["1"]
    assert sorted(p.name for p in (features_dir / "1").iterdir()) == ["model.onnx"]
    features_metadata = {
        p.key: p.value for p in onnx.load(str(features_dir / "1" / "model.onnx")).metadata_props
    }
    assert features_metadata["parent_model"] == "digits"
    assert features_metadata["parent_version"] == "1"
    assert features_metadata["parent_sha256"] == report["model_sha256"]


def test_cli_can_skip_the_features_model(tmp_path: Path, small_split: DatasetSplit) -> None:
    idx_dir = tmp_path / "idx"
    write_idx_dir(idx_dir, small_split, True, CLI_TRAIN_COUNT, CLI_TEST_COUNT)
    argv = ["--dataset", f"idx:{idx_dir}", "--epochs", "1", "--no-plots", "--no-features-model"]
    assert main([*argv, "--output-dir", str(tmp_path / "repo")]) == 0
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["mnist"]


def test_cli_reports_a_truncated_idx_file(
    tmp_path: Path, small_split: DatasetSplit, caplog: pytest.LogCaptureFixture
) -> None:
    paths = write_idx_dir(tmp_path / "idx", small_split, False, CLI_TRAIN_COUNT, CLI_TEST_COUNT)
    labels = paths["test_labels"]
    labels.write_bytes(labels.read_bytes()[:-1])
    with caplog.at_level(logging.ERROR):
        code = main(["--dataset", f"idx:{tmp_path / 'idx'}", "--output-dir", str(tmp_path)])
    assert code == 1
    assert str(labels) in caplog.text
    assert not (tmp_path / "mnist").exists()


def test_next_free_version_ignores_other_entries(tmp_path: Path) -> None:
    model_dir = tmp_path / "mnist"
    assert next_free_version(model_dir) == 1
    for name in ("1", "3", "notes", ".staging-9-1"):
        (model_dir / name).mkdir(parents=True)
    (model_dir / "7").write_text("a file, not a version folder")
    assert next_free_version(model_dir) == 4


def test_version_folders_follow_the_servers_rule(tmp_path: Path) -> None:
    # "08" and non-ASCII digits are not versions to the server: the exporter must agree,
    # or it would number a new version after a folder the server never serves.
    model_dir = tmp_path / "mnist"
    for name in ("2", "08", "\u0665"):  # \u0665: ARABIC-INDIC DIGIT FIVE, str.isdigit() is True
        (model_dir / name).mkdir(parents=True)
    assert [name for name in ("2", "08", "\u0665") if is_version_name(name)] == ["2"]
    assert next_free_version(model_dir) == 3


def _write_then_fail(model_dir: Path) -> None:
    with staged_version(model_dir, 1) as staging:
        (staging / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("export failed")


def test_failed_staging_leaves_no_version(tmp_path: Path) -> None:
    model_dir = tmp_path / "mnist"
    with pytest.raises(RuntimeError, match="export failed"):
        _write_then_fail(model_dir)
    assert list(model_dir.iterdir()) == []
