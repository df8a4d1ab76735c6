"""The model repository through NVIDIA's tritonclient[grpc], unchanged, against a server
process: Triton's repository, configuration and statistics extensions, the classification
extension, and a version swapped in while 8 callers keep sending.

Its own pytest process with the other interop tests (see conftest.py): nothing here imports
the server or our V2 stubs. Each test starts its own server over its own repository
(`mnist` and `fashion`, the session's network under Fashion-MNIST's class names), since
several change what is served.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.interop.conftest import NO_DRAIN
from tests.repository_models import FASHION_LABELS, MODEL_FILE, add_version, stage_version
from tests.support.server_process import ServerProcess, start_server_process

INPUT_NAME = "pixels"
PROBABILITIES = "probabilities"
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
MIN_MNIST_ACCURACY = 0.95
ACCURACY_CHUNK = 250
NOT_FOUND = "StatusCode.NOT_FOUND"
EXPECTED_EXTENSIONS = ["classification", "model_configuration", "model_repository", "statistics"]
CLASS_COUNT = 3
# The swap under load: 8 callers, each bounded in calls and time.
CALLERS = 8
CALL_TIMEOUT_S = 30.0
MAX_CALLS_PER_CALLER = 2_000
ANSWERS_BEFORE_AND_AFTER_SWAP = 100
SWAP_LIMIT_S = 90.0


@pytest.fixture
def repository(tmp_path: Path, model_dir: Path) -> Path:
    root = tmp_path / "repository"
    add_version(model_dir / MODEL_FILE, root, "mnist", 1)
    add_version(model_dir / MODEL_FILE, root, "fashion", 1, labels=FASHION_LABELS)
    return root


@pytest.fixture
def server(repository: Path) -> Iterator[ServerProcess]:
    with start_server_process(repository, *NO_DRAIN) as process:
        yield process
        exit_code = process.stop()
    assert exit_code == 0, process.output()[-2000:]


@pytest.fixture
def client(server: ServerProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(server.target) as triton_client:
        yield triton_client


def uint8_input(images: np.ndarray) -> triton.InferInput:
    batch = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), *IMAGE_SHAPE)
    tensor = triton.InferInput(INPUT_NAME, list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)
    return tensor


def infer(
    client: triton.InferenceServerClient,
    model: str,
    images: np.ndarray,
    *,
    version: str = "",
    outputs: list[triton.InferRequestedOutput] | None = None,
) -> Any:
    return client.infer(
        model,
        [uint8_input(images)],
        model_version=version,
        outputs=outputs,
        client_timeout=CALL_TIMEOUT_S,
    )


def index_of(client: triton.InferenceServerClient) -> dict[tuple[str, str], str]:
    index = client.get_model_repository_index()
    return {(model.name, model.version): model.state for model in index.models}


def accuracy(client: triton.InferenceServerClient, model: str, digits: tuple[Any, Any]) -> float:
    images, labels = digits
    predicted = [
        infer(client, model, images[start : start + ACCURACY_CHUNK])
        .as_numpy(PROBABILITIES)
        .argmax(axis=1)
        for start in range(0, len(images), ACCURACY_CHUNK)
    ]
    return float((np.concatenate(predicted) == labels).mean())


def test_index_lists_both_models_ready_and_both_infer(
    client: triton.InferenceServerClient, sample_digits: tuple[Any, Any]
) -> None:
    assert index_of(client) == {("fashion", "1"): "READY", ("mnist", "1"): "READY"}
    assert client.is_model_ready("mnist")
    assert client.is_model_ready("fashion")
    mnist_accuracy = accuracy(client, "mnist", sample_digits)
    assert mnist_accuracy >= MIN_MNIST_ACCURACY
    # The same network under another name and class names: the same answers.
    images = sample_digits[0][:32]
    mnist = infer(client, "mnist", images)
    fashion = infer(client, "fashion", images)
    assert fashion.get_response().model_name == "fashion"
    assert fashion.get_response().model_version == "1"
    np.testing.assert_allclose(
        fashion.as_numpy(PROBABILITIES), mnist.as_numpy(PROBABILITIES), atol=1e-6
    )


def test_model_config_and_statistics_report_real_counts(
    client: triton.InferenceServerClient, sample_digits: tuple[Any, Any]
) -> None:
    config = client.get_model_config("mnist").config
    assert config.name == "mnist"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size >= 1
    assert [(i.name, list(i.dims)) for i in config.input] == [(INPUT_NAME, list(IMAGE_SHAPE))]
    assert sorted(o.name for o in config.output) == ["logits", PROBABILITIES]
    assert config.version_policy.WhichOneof("policy_choice") == "latest"
    assert config.version_policy.latest.num_versions == 1

    images = sample_digits[0]
    batch_sizes = [1, 2, 3, 5, 8]
    wall_before_ms = time.time_ns() // 1_000_000
    before_ns = time.perf_counter_ns()
    for size in batch_sizes:
        infer(client, "mnist", images[:size])
    elapsed_ns = time.perf_counter_ns() - before_ns
    wall_after_ms = time.time_ns() // 1_000_000
    bad = triton.InferInput(INPUT_NAME, [1, 3, 28, 28], "UINT8")
    bad.set_data_from_numpy(np.zeros((1, 3, 28, 28), dtype=np.uint8))
    with pytest.raises(InferenceServerException) as refused:
        client.infer("mnist", [bad])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    infer(client, "fashion", images[:4])

    (mnist,) = client.get_inference_statistics("mnist").model_stats
    assert (mnist.name, mnist.version) == ("mnist", "1")
    inference = mnist.inference_stats
    assert inference.success.count == len(batch_sizes)
    # Each answered call's time holds its queue wait and its batch's compute; the server
    # measured it within the client's call, so within the loop that made the calls.
    assert inference.queue.ns + inference.compute_infer.ns <= inference.success.ns <= elapsed_ns
    assert mnist.inference_count == sum(batch_sizes)
    assert inference.queue.count == len(batch_sizes)
    assert inference.compute_infer.count == len(batch_sizes)
    # One call at a time: each was a batch of its own.
    assert mnist.execution_count == len(batch_sizes)
    assert sorted((b.batch_size, b.compute_infer.count) for b in mnist.batch_stats) == [
        (size, 1) for size in batch_sizes
    ]
    assert wall_before_ms <= mnist.last_inference <= wall_after_ms

    every = client.get_inference_statistics().model_stats
    counts = {(s.name, s.version): s.inference_count for s in every}
    assert counts == {("fashion", "1"): 4, ("mnist", "1"): sum(batch_sizes)}


def test_a_staged_version_is_loaded_while_8_callers_send_and_none_fails(
    server: ServerProcess,
    client: triton.InferenceServerClient,
    repository: Path,
    model_dir: Path,
    sample_digits: tuple[Any, Any],
) -> None:
    images = sample_digits[0]
    stop = threading.Event()
    lock = threading.Lock()
    # (monotonic time the call started, version that answered)
    answers: list[tuple[float, str]] = []
    failures: list[str] = []

    def caller(offset: int) -> None:
        with triton.InferenceServerClient(server.target) as own:
            for call in range(MAX_CALLS_PER_CALLER):
                if stop.is_set():
                    return
                start = (offset + call) % 900
                batch = images[start : start + 1 + call % 3]
                sent_at = time.monotonic()
                try:
                    version = infer(own, "mnist", batch).get_response().model_version
                except InferenceServerException as exc:
                    with lock:
                        failures.append(f"{exc.status()}: {exc.message()}")
                    continue
                with lock:
                    answers.append((sent_at, version))

    def wait_for_answers(count: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            with lock:
                if len(answers) >= count:
                    return
            time.sleep(0.01)
        raise AssertionError(f"only {len(answers)} answers, expected {count}; {failures[:3]}")

    threads = [threading.Thread(target=caller, args=(i * 97,)) for i in range(CALLERS)]
    deadline = time.monotonic() + SWAP_LIMIT_S
    for thread in threads:
        thread.start()
    try:
        wait_for_answers(ANSWERS_BEFORE_AND_AFTER_SWAP, deadline)
        stage_version(model_dir / MODEL_FILE, repository, "mnist", 2)
        client.load_model("mnist", client_timeout=CALL_TIMEOUT_S)
        loaded_at = time.monotonic()
        with lock:
            answered_at_load = len(answers)
        wait_for_answers(answered_at_load + ANSWERS_BEFORE_AND_AFTER_SWAP, deadline)
    finally:
        stop.set()
        for thread in threads:
            thread.join(CALL_TIMEOUT_S * 2)
    assert not any(thread.is_alive() for thread in threads)

    assert failures == []
    assert {version for _, version in answers} == {"1", "2"}
    # Every call sent after load_model returned is answered by the new version.
    after = [version for sent_at, version in answers if sent_at > loaded_at]
    assert len(after) >= ANSWERS_BEFORE_AND_AFTER_SWAP - CALLERS
    assert set(after) == {"2"}
    with pytest.raises(InferenceServerException) as retired:
        infer(client, "mnist", images[:1], version="1")
    assert retired.value.status() == NOT_FOUND
    assert infer(client, "mnist", images[:1], version="2").get_response().model_version == "2"
    assert index_of(client) == {("fashion", "1"): "READY", ("mnist", "2"): "READY"}
    assert [s.version for s in client.get_inference_statistics("mnist").model_stats] == ["2"]


def test_unload_then_load_fashion(
    client: triton.InferenceServerClient, sample_digits: tuple[Any, Any]
) -> None:
    images = sample_digits[0][:2]
    client.unload_model("fashion")
    with pytest.raises(InferenceServerException) as unloaded:
        infer(client, "fashion", images)
    assert unloaded.value.status() == NOT_FOUND
    assert "fashion" in str(unloaded.value.message())
    assert not client.is_model_ready("fashion")
    assert index_of(client)[("fashion", "")] == "UNAVAILABLE"
    assert client.get_model_repository_index(as_json=True)["models"] == [
        {"name": "fashion", "state": "UNAVAILABLE", "reason": "unloaded"},
        {"name": "mnist", "version": "1", "state": "READY"},
    ]
    # The other model is untouched.
    assert infer(client, "mnist", images).get_response().model_version == "1"

    client.load_model("fashion")
    assert client.is_model_ready("fashion")
    reloaded = infer(client, "fashion", images)
    assert reloaded.get_response().model_version == "1"
    assert reloaded.as_numpy(PROBABILITIES).shape == (len(images), NUM_CLASSES)


def test_server_metadata_lists_exactly_the_extensions_implemented(
    client: triton.InferenceServerClient,
) -> None:
    metadata = client.get_server_metadata()
    assert sorted(metadata.extensions) == EXPECTED_EXTENSIONS
    assert len(metadata.extensions) == len(EXPECTED_EXTENSIONS)


def model_labels(path: Path) -> list[str]:
    """The class names the model file carries (its "labels" metadata)."""
    props = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    labels: list[str] = json.loads(props["labels"])
    return labels


@pytest.mark.parametrize("model", ["fashion", "mnist"])
def test_classification_extension_answers_score_index_label(
    client: triton.InferenceServerClient,
    repository: Path,
    sample_digits: tuple[Any, Any],
    model: str,
) -> None:
    labels = model_labels(repository / model / "1" / MODEL_FILE)
    assert len(labels) == NUM_CLASSES
    if model == "fashion":
        assert labels == list(FASHION_LABELS)
    images = sample_digits[0][:4]
    plain = infer(client, model, images).as_numpy(PROBABILITIES)
    requested = [triton.InferRequestedOutput(PROBABILITIES, class_count=CLASS_COUNT)]
    classes = infer(client, model, images, outputs=requested).as_numpy(PROBABILITIES)
    assert classes.shape == (len(images), CLASS_COUNT)
    for row, entries in zip(plain, classes, strict=True):
        ranked = np.argsort(-row, kind="stable")[:CLASS_COUNT]
        parsed = [entry.decode().split(":", 2) for entry in entries]
        assert [int(index) for _, index, _ in parsed] == ranked.tolist()
        for (score, _, label), expected_index in zip(parsed, ranked, strict=True):
            assert float(score) == pytest.approx(float(row[expected_index]), abs=1e-5)
            assert label == labels[expected_index]
