"""Serving on CUDA, tested on a machine without a GPU: the provider choice and its messages,
the padded batch sizes and their warm-up, and the CUDA options of config.pbtxt.

Real ONNX Runtime sessions (the CPU build) throughout. What only a GPU build with a GPU can
answer is faked, and nothing else: the providers the build offers, the driver's answer, the
provider a session reports. `make test-gpu-build` runs the real onnxruntime-gpu build here
(tests/e2e/gpu_build).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from mnist_serving_server.core import runtime
from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.model_config import ModelConfig, read_model_config
from mnist_serving_server.core.ort_names import CPU_PROVIDER, CUDA_PROVIDER
from mnist_serving_server.core.runtime import (
    ModelRuntime,
    batch_buckets,
    choose_provider,
    padded_size,
    warm_up_plan,
)
from mnist_serving_server.core.triton_records import model_config_record

WITHOUT_GPU = "no NVIDIA driver (libcuda.so.1: cannot open shared object file)"


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test decides the provider anew (the server decides once per process)."""
    monkeypatch.setattr(runtime, "_choices", {})


@pytest.fixture
def gpu_build_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu on a machine whose driver sees no GPU (what this machine is with
    .venv-gpu): the build offers CUDA, the driver says no."""
    monkeypatch.setattr(runtime, "available_providers", lambda: (CUDA_PROVIDER, CPU_PROVIDER))
    monkeypatch.setattr(runtime, "cuda_device_problem", lambda: WITHOUT_GPU)


@pytest.fixture
def model_path(model_dir: Path) -> Path:
    return model_dir / "model.onnx"


# --- the provider choice and its messages ------------------------------------------------


@pytest.mark.skipif(
    CUDA_PROVIDER in ort.get_available_providers(), reason="this onnxruntime build has CUDA"
)
def test_the_cpu_build_serves_auto_on_the_cpu_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert not choose_provider("auto").cuda
    assert caplog.text == ""


@pytest.mark.skipif(
    CUDA_PROVIDER in ort.get_available_providers(), reason="this onnxruntime build has CUDA"
)
def test_cuda_on_the_cpu_build_says_to_install_the_gpu_build() -> None:
    with pytest.raises(ModelLoadError) as raised:
        choose_provider("cuda")
    message = str(raised.value)
    assert "has no CUDAExecutionProvider" in message
    assert "make serve ORT=gpu" in message
    assert "--provider auto" in message


def test_auto_on_the_gpu_build_without_a_gpu_falls_back_with_one_warning(
    gpu_build_without_gpu: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=runtime.__name__):
        for _ in range(3):  # one per model version loaded: still one warning
            choice = choose_provider("auto")
            assert not choice.cuda
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"onnxruntime-gpu is installed but {WITHOUT_GPU}")
    assert f"serving on {CPU_PROVIDER}" in warnings[0]
    assert "ORT=cpu" in warnings[0]


def test_cuda_on_the_gpu_build_without_a_gpu_refuses_saying_what_to_do(
    gpu_build_without_gpu: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), pytest.raises(ModelLoadError) as raised:
        choose_provider("cuda")
    assert str(raised.value) == (
        f"provider 'cuda' requested but onnxruntime-gpu is installed but {WITHOUT_GPU}; "
        f"{runtime.WHAT_TO_DO_WITHOUT_GPU}"
    )
    for advice in ("NVIDIA GPU and its driver", "--provider auto", "--provider cpu", "ORT=cpu"):
        assert advice in str(raised.value)
    assert caplog.text == ""  # the error says it all: no warning besides


def test_cpu_asks_nothing_of_the_build_or_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    def unexpected() -> Any:
        raise AssertionError("asked")

    monkeypatch.setattr(runtime, "available_providers", unexpected)
    monkeypatch.setattr(runtime, "cuda_device_problem", unexpected)
    assert choose_provider("cpu") == runtime.ProviderChoice(cuda=False)


def test_a_gpu_the_driver_sees_is_used_after_preloading_the_cuda_wheels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    preloaded: list[bool] = []
    monkeypatch.setattr(runtime, "available_providers", lambda: (CUDA_PROVIDER, CPU_PROVIDER))
    monkeypatch.setattr(runtime, "cuda_device_problem", lambda: None)
    monkeypatch.setattr(ort, "preload_dlls", lambda: preloaded.append(True), raising=False)
    assert choose_provider("auto") == runtime.ProviderChoice(cuda=True)
    assert choose_provider("cuda") == runtime.ProviderChoice(cuda=True)
    assert preloaded == [True, True]  # once per requested provider, not once per model


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia"), reason="an NVIDIA driver is here")
def test_the_driver_probe_says_why_there_is_no_gpu_here() -> None:
    problem = runtime.cuda_device_problem()
    assert problem is not None
    assert problem.startswith(("no NVIDIA driver", "the NVIDIA driver"))


def test_a_model_loads_on_the_cpu_from_the_gpu_build_without_a_gpu(
    gpu_build_without_gpu: None, model_path: Path
) -> None:
    loaded = ModelRuntime.load(model_path, name="mnist", version="1", provider="auto")
    assert loaded.info.provider == CPU_PROVIDER
    assert dict(loaded.info.provider_options) == {}
    assert loaded.warm_up(64) == (1, 64)
    assert loaded.pad_to == ()
    with pytest.raises(ModelLoadError, match="provider 'cuda' requested"):
        ModelRuntime.load(model_path, name="mnist", version="1", provider="cuda")


def test_cuda_options_reach_the_cuda_provider(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where CUDA is chosen the session is asked for it with config.pbtxt's options (this
    CPU build then runs on the CPU, which the runtime says)."""
    requested: list[Any] = []
    real_session = ort.InferenceSession

    def session(path: str, options: Any = None, providers: Any = None, **kwargs: Any) -> Any:
        requested.append(providers)
        return real_session(path, options, providers=[CPU_PROVIDER], **kwargs)

    monkeypatch.setattr(runtime, "choose_provider", lambda _: runtime.ProviderChoice(cuda=True))
    monkeypatch.setattr(ort, "InferenceSession", session)
    options = {"cudnn_conv_algo_search": "HEURISTIC", "device_id": "0"}
    ModelRuntime.load(model_path, name="mnist", version="1", cuda_options=options)
    assert requested[-1] == [(CUDA_PROVIDER, options), CPU_PROVIDER]


# --- padded batch sizes and their warm-up ----------------------------------------------------


@pytest.mark.parametrize(
    ("max_batch_size", "buckets"),
    [
        (64, (1, 2, 4, 8, 16, 32, 64)),
        (48, (1, 2, 4, 8, 16, 32, 48)),
        (8, (1, 2, 4, 8)),
        (3, (1, 2, 3)),
        (1, (1,)),
        (0, (1,)),
    ],
)
def test_buckets_are_powers_of_two_up_to_the_max_batch(
    max_batch_size: int, buckets: tuple[int, ...]
) -> None:
    assert batch_buckets(max_batch_size) == buckets


def test_a_batch_is_padded_to_the_smallest_bucket_that_holds_it() -> None:
    buckets = batch_buckets(48)
    sizes = {rows: padded_size(rows, buckets) for rows in (1, 2, 3, 5, 16, 17, 33, 48, 49)}
    assert sizes == {1: 1, 2: 2, 3: 4, 5: 8, 16: 16, 17: 32, 33: 48, 48: 48, 49: 49}
    # Never more than twice the rows run.
    assert all(padded_size(rows, buckets) < 2 * rows for rows in range(2, 49))


def test_the_warm_up_plan_is_every_bucket_on_cuda_only() -> None:
    assert warm_up_plan(CUDA_PROVIDER, 64) == batch_buckets(64)
    assert warm_up_plan(CPU_PROVIDER, 64) == (1, 64)
    assert warm_up_plan(CPU_PROVIDER, 1) == (1,)


class RecordingSession:
    """A real session whose input batch sizes are recorded."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self.batch_sizes: list[int] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        (pixels,) = feeds.values()
        self.batch_sizes.append(pixels.shape[0])
        return self._session.run(names, feeds)  # type: ignore[no-any-return]


@pytest.fixture
def on_cuda(model_path: Path) -> tuple[ModelRuntime, RecordingSession]:
    """A runtime that reports CUDA as its provider: a real CPU session underneath."""
    loaded = ModelRuntime.load(model_path, name="mnist", version="1", provider="cpu")
    session = RecordingSession(loaded._session)
    info = dataclasses.replace(loaded.info, provider=CUDA_PROVIDER)
    return ModelRuntime(session, info), session


def test_warm_up_on_cuda_runs_every_bucket_then_pads_each_batch(
    on_cuda: tuple[ModelRuntime, RecordingSession],
    sample_digits: tuple[Any, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cuda, session = on_cuda
    with caplog.at_level(logging.INFO, logger=runtime.__name__):
        assert cuda.warm_up(48) == (1, 2, 4, 8, 16, 32, 48)
    assert session.batch_sizes == [1, 2, 4, 8, 16, 32, 48]
    assert "batches padded to [1, 2, 4, 8, 16, 32, 48]" in caplog.text
    assert cuda.pad_to == (1, 2, 4, 8, 16, 32, 48)
    session.batch_sizes.clear()
    digits, _ = sample_digits
    for rows in (1, 3, 5, 20, 40, 48):
        pixels = np.ascontiguousarray(digits[:rows, np.newaxis], dtype=np.uint8)
        padded = cuda.run(pixels)
        assert padded["probabilities"].shape == (rows, 10)
        unpadded = cuda._session._session.run(None, {"pixels": pixels})
        np.testing.assert_allclose(padded["probabilities"], unpadded[0], atol=1e-6)
    assert session.batch_sizes == [1, 4, 8, 32, 48, 48]


def test_on_the_cpu_batches_run_as_they_come(model_path: Path) -> None:
    loaded = ModelRuntime.load(model_path, name="mnist", version="1", provider="cpu")
    session = RecordingSession(loaded._session)
    cpu = ModelRuntime(session, loaded.info)
    assert cpu.warm_up(64) == (1, 64)
    assert cpu.pad_to == ()
    cpu.run(np.zeros((5, 1, 28, 28), dtype=np.uint8))
    assert session.batch_sizes == [1, 64, 5]


# --- CUDA options in config.pbtxt -------------------------------------------------------------


def read(tmp_path: Path, text: str) -> ModelConfig:
    model_dir = tmp_path / "mnist"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.pbtxt").write_text(text, encoding="utf-8")
    return read_model_config(model_dir, default_max_batch_size=64, default_max_queue_delay_s=0.0)


def parameters(**values: str) -> str:
    return "\n".join(
        f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
        for key, value in values.items()
    )


def test_tritons_onnxruntime_parameters_become_cuda_options(tmp_path: Path) -> None:
    config = read(
        tmp_path,
        parameters(
            cudnn_conv_algo_search="1",
            gpu_mem_limit="4294967200",
            arena_extend_strategy="1",
            do_copy_in_default_stream="true",
            cudnn_conv_use_max_workspace="0",
            device_id="1",
            intra_op_thread_count="2",  # another backend's parameter: not the CUDA provider's
        ),
    )
    assert config.cuda_provider_options == {
        "arena_extend_strategy": "kSameAsRequested",
        "cudnn_conv_algo_search": "HEURISTIC",
        "cudnn_conv_use_max_workspace": "0",
        "device_id": "1",
        "do_copy_in_default_stream": "1",
        "gpu_mem_limit": "4294967200",
    }


@pytest.mark.parametrize(
    ("written", "taken"),
    [("0", "EXHAUSTIVE"), ("HEURISTIC", "HEURISTIC"), ("default", "DEFAULT"), ("2", "DEFAULT")],
)
def test_the_algorithm_search_takes_tritons_numbers_or_onnx_runtimes_names(
    tmp_path: Path, written: str, taken: str
) -> None:
    config = read(tmp_path, parameters(cudnn_conv_algo_search=written))
    assert config.cuda_options == (("cudnn_conv_algo_search", taken),)


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("cudnn_conv_algo_search", "FASTEST", "0/EXHAUSTIVE, 1/HEURISTIC or 2/DEFAULT"),
        ("gpu_mem_limit", "4GB", "a number of bytes >= 1"),
        ("gpu_mem_limit", "0", "a number of bytes >= 1"),
        ("device_id", "-1", "a GPU index >= 0"),
        ("do_copy_in_default_stream", "yes", "0 or 1"),
    ],
)
def test_a_wrong_cuda_option_names_the_key_and_what_is_valid(
    tmp_path: Path, key: str, value: str, valid: str
) -> None:
    with pytest.raises(ModelLoadError) as raised:
        read(tmp_path, parameters(**{key: value}))
    assert str(raised.value).endswith(
        f"config.pbtxt: parameters {key!r} is {value!r}; the CUDA provider takes {valid}"
    )


def test_model_config_shows_the_cuda_options(tmp_path: Path, model_path: Path) -> None:
    info = ModelRuntime.load(model_path, name="mnist", version="1", provider="cpu").info
    config = read(tmp_path, parameters(cudnn_conv_algo_search="1", gpu_mem_limit="1048576"))
    record = model_config_record(config, info)
    assert record["parameters"] == {
        "cudnn_conv_algo_search": {"string_value": "HEURISTIC"},
        "gpu_mem_limit": {"string_value": "1048576"},
    }
    assert "parameters" not in model_config_record(read(tmp_path, ""), info)
