"""config.pbtxt (Triton's ModelConfig text format) read over the server's defaults, on real
files; and which versions a policy serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.model_config import (
    DEFAULT_LATEST_VERSIONS,
    ModelConfig,
    TensorConfig,
    VersionPolicy,
    read_model_config,
    triton_type_name,
    v2_type_name,
)

DEFAULT_BATCH = 64
DEFAULT_DELAY_S = 0.004
MODEL = "digits"


def read(tmp_path: Path, text: str | bytes | None, *, folder: str = MODEL) -> ModelConfig:
    model_dir = tmp_path / folder
    model_dir.mkdir(exist_ok=True)
    if isinstance(text, str):
        (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    elif isinstance(text, bytes):
        (model_dir / "config.pbtxt").write_bytes(text)
    return read_model_config(
        model_dir, default_max_batch_size=DEFAULT_BATCH, default_max_queue_delay_s=DEFAULT_DELAY_S
    )


def test_absent_config_is_the_server_defaults_and_latest_one(tmp_path: Path) -> None:
    config = read(tmp_path, None)
    assert config == ModelConfig(
        name=MODEL, max_batch_size=DEFAULT_BATCH, max_queue_delay_s=DEFAULT_DELAY_S
    )
    assert config.version_policy == VersionPolicy(latest=DEFAULT_LATEST_VERSIONS)
    assert config.version_policy.describe() == "latest 1"
    assert config.inputs is None
    assert config.outputs is None
    assert not config.from_file


def test_an_empty_config_keeps_every_default_but_is_from_the_file(tmp_path: Path) -> None:
    config = read(tmp_path, "")
    assert config.from_file
    assert (config.name, config.max_batch_size, config.max_queue_delay_s) == (
        MODEL,
        DEFAULT_BATCH,
        DEFAULT_DELAY_S,
    )
    assert config.version_policy == VersionPolicy()


def test_a_full_config_overrides_the_defaults(tmp_path: Path) -> None:
    config = read(
        tmp_path,
        f'name: "{MODEL}"\n'
        'platform: "onnxruntime_onnx"\n'
        'backend: "onnxruntime"\n'
        "max_batch_size: 8\n"
        'input [ { name: "pixels" data_type: TYPE_UINT8 dims: [ 1, 28, 28 ] } ]\n'
        "output [\n"
        '  { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] },\n'
        '  { name: "names" data_type: TYPE_STRING dims: [ -1 ] }\n'
        "]\n"
        "version_policy: { latest: { num_versions: 2 } }\n"
        "dynamic_batching { max_queue_delay_microseconds: 2500 }\n",
    )
    assert config.from_file
    assert config.max_batch_size == 8
    assert config.max_queue_delay_s == pytest.approx(0.0025)
    assert config.version_policy == VersionPolicy(latest=2)
    assert config.inputs == (TensorConfig("pixels", "UINT8", (1, 28, 28)),)
    assert config.outputs == (
        TensorConfig("probabilities", "FP32", (10,)),
        TensorConfig("names", "BYTES", (-1,)),
    )


def test_dynamic_batching_without_a_delay_means_no_delay(tmp_path: Path) -> None:
    assert read(tmp_path, "dynamic_batching { }").max_queue_delay_s == 0.0
    assert read(tmp_path, "max_batch_size: 4").max_queue_delay_s == DEFAULT_DELAY_S


def test_unset_max_batch_size_keeps_the_server_flag(tmp_path: Path) -> None:
    assert read(tmp_path, 'name: "digits"').max_batch_size == DEFAULT_BATCH


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name: "other"', "name 'other' does not match its folder 'digits'"),
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' is not served"),
        ('backend: "pytorch"', "backend 'pytorch' is not served"),
        ("max_batch_size: -2", "max_batch_size must be >= 1, got -2"),
        ("max_batch_size: [oops", "not a valid Triton model configuration"),
        ("no_such_field: 1", "not a valid Triton model configuration"),
        ("version_policy: { latest: { num_versions: 0 } }", "num_versions must be >= 1, got 0"),
        ("version_policy: { specific: { } }", "specific lists no versions"),
    ],
)
def test_a_wrong_config_is_refused_saying_what_to_fix(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ModelLoadError) as raised:
        read(tmp_path, text)
    assert message in str(raised.value)
    assert "config.pbtxt" in str(raised.value)


def test_a_config_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot read"):
        read(tmp_path, b"name: \xff\xfe")


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("version_policy: { latest: { num_versions: 3 } }", VersionPolicy(latest=3)),
        ("version_policy: { all: { } }", VersionPolicy(latest=None)),
        ("version_policy: { }", VersionPolicy(latest=None)),
        (
            "version_policy: { specific: { versions: [ 4, 1 ] } }",
            VersionPolicy(latest=None, specific=(4, 1)),
        ),
    ],
)
def test_version_policies(tmp_path: Path, text: str, policy: VersionPolicy) -> None:
    assert read(tmp_path, text).version_policy == policy


@pytest.mark.parametrize(
    ("policy", "expected", "described"),
    [
        (VersionPolicy(), (10,), "latest 1"),
        (VersionPolicy(latest=2), (3, 10), "latest 2"),
        (VersionPolicy(latest=9), (1, 2, 3, 10), "latest 9"),
        (VersionPolicy(latest=None), (1, 2, 3, 10), "all"),
        (VersionPolicy(latest=None, specific=(10, 1, 7)), (1, 10), "specific [10, 1, 7]"),
        (VersionPolicy(latest=None, specific=(7,)), (), "specific [7]"),
    ],
)
def test_version_policy_selects_ascending_from_what_exists(
    policy: VersionPolicy, expected: tuple[int, ...], described: str
) -> None:
    assert policy.select([3, 1, 10, 2]) == expected
    assert policy.select([]) == ()
    assert policy.describe() == described


@pytest.mark.parametrize(
    ("v2", "triton"),
    [
        ("FP32", "TYPE_FP32"),
        ("UINT8", "TYPE_UINT8"),
        ("INT64", "TYPE_INT64"),
        ("BYTES", "TYPE_STRING"),
    ],
)
def test_datatype_names_round_trip(v2: str, triton: str) -> None:
    assert triton_type_name(v2) == triton
    assert v2_type_name(triton) == v2
