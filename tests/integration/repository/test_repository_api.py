"""The model repository on a real server: several models, Triton's repository, config and
statistics RPCs, and versions swapped while serving."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from mnist_serving_proto import classifier_pb2, classifier_pb2_grpc
from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from mnist_serving_server.app import ServingApp
from mnist_serving_server.core.errors import ModelLoadError
from tests.integration.conftest import StartApp
from tests.repository_models import (
    FASHION_LABELS,
    add_version,
    answered_by,
    reference_probabilities,
    stage_version,
    write_broken,
)

CALLERS = 8
SWAP_LOAD_LIMIT_S = 60.0
MAX_CALLS_PER_CALLER = 5_000


def infer_request(model: str, images: np.ndarray, version: str = "") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version)
    request.inputs.add(name="pixels", datatype="UINT8", shape=[len(images), 1, 28, 28])
    request.raw_input_contents.append(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    return request


def regressor_request(values: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="regressor")
    request.inputs.add(name="features", datatype="FP32", shape=list(values.shape))
    request.raw_input_contents.append(values.astype("<f4").tobytes())
    return request


def probabilities(response: pb.ModelInferResponse) -> np.ndarray:
    index = [o.name for o in response.outputs].index("probabilities")
    shape = tuple(response.outputs[index].shape)
    return np.frombuffer(response.raw_output_contents[index], dtype="<f4").reshape(shape)


async def start(start_app: StartApp, repository: Path, **overrides: Any) -> ServingApp:
    return await start_app(model_repository=repository, **overrides)


@pytest.fixture
async def app(start_app: StartApp, repository: Path) -> ServingApp:
    return await start(start_app, repository)


@pytest.fixture
async def v2(app: ServingApp) -> Any:
    async with aio.insecure_channel(app.target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def index_of(response: pb.RepositoryIndexResponse) -> dict[tuple[str, str], tuple[str, str]]:
    return {(m.name, m.version): (m.state, m.reason) for m in response.models}


async def test_every_model_of_the_repository_is_served(
    v2: Any, sample_digits: tuple[Any, Any]
) -> None:
    index = index_of(await v2.RepositoryIndex(pb.RepositoryIndexRequest()))
    assert index == {
        ("fashion", "1"): ("READY", ""),
        ("mnist", "1"): ("READY", ""),
        ("regressor", "1"): ("READY", ""),
    }
    images, labels = sample_digits
    mnist = probabilities(await v2.ModelInfer(infer_request("mnist", images[:64])))
    fashion = probabilities(await v2.ModelInfer(infer_request("fashion", images[:64])))
    np.testing.assert_allclose(mnist, fashion, atol=1e-6)  # the same network, two names
    assert (mnist.argmax(axis=1) == labels[:64]).mean() >= 0.9
    doubled = await v2.ModelInfer(regressor_request(np.arange(8, dtype=np.float32).reshape(2, 4)))
    assert doubled.outputs[0].name == "doubled"
    assert list(doubled.outputs[0].shape) == [2, 4]
    values = np.frombuffer(doubled.raw_output_contents[0], dtype="<f4")
    np.testing.assert_array_equal(values, np.arange(8, dtype=np.float32) * 2)


async def test_an_empty_model_name_means_mnist(v2: Any, sample_digits: tuple[Any, Any]) -> None:
    images, _ = sample_digits
    response = await v2.ModelInfer(infer_request("", images[:1]))
    assert (response.model_name, response.model_version) == ("mnist", "1")


async def test_classify_answers_with_each_models_class_names(
    app: ServingApp, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    async with aio.insecure_channel(app.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        request = classifier_pb2.ClassifyRequest(
            images=[classifier_pb2.Image(pixels=image.tobytes()) for image in images[:16]],
            top_k=2,
        )
        digits = await stub.Classify(request)
        request.model_name = "fashion"
        garments = await stub.Classify(request)
    assert digits.model_name == "mnist"
    assert [p.class_name for p in digits.predictions] == [str(p.label) for p in digits.predictions]
    assert garments.model_name == "fashion"
    assert [p.class_name for p in garments.predictions] == [
        FASHION_LABELS[p.label] for p in garments.predictions
    ]
    assert all(
        score.class_name == FASHION_LABELS[score.label]
        for prediction in garments.predictions
        for score in prediction.top_k
    )


async def test_classify_refuses_a_model_that_is_not_an_image_classifier(app: ServingApp) -> None:
    async with aio.insecure_channel(app.target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.Classify(
                classifier_pb2.ClassifyRequest(
                    model_name="regressor", images=[classifier_pb2.Image(pixels=bytes(784))]
                )
            )
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "not an image classifier" in str(raised.value.details())
    assert "ModelInfer" in str(raised.value.details())


async def test_requests_are_checked_against_each_models_own_graph(v2: Any) -> None:
    wrong = pb.ModelInferRequest(model_name="regressor")
    wrong.inputs.add(name="features", datatype="FP32", shape=[1, 5])
    wrong.raw_input_contents.append(bytes(20))
    with pytest.raises(aio.AioRpcError) as raised:
        await v2.ModelInfer(wrong)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "shape [1,5] is not accepted" in str(raised.value.details())
    assert "FP32 [N,4]" in str(raised.value.details())


async def test_model_metadata_comes_from_each_graph(v2: Any) -> None:
    metadata = await v2.ModelMetadata(pb.ModelMetadataRequest(name="regressor"))
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("features", "FP32", [-1, 4])
    ]
    assert list(metadata.versions) == ["1"]


async def test_unloaded_model_is_not_found_until_loaded_again(
    v2: Any, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    await v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="fashion"))
    with pytest.raises(aio.AioRpcError) as raised:
        await v2.ModelInfer(infer_request("fashion", images[:1]))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    assert "'fashion' is not loaded" in str(raised.value.details())
    index = index_of(await v2.RepositoryIndex(pb.RepositoryIndexRequest()))
    assert index[("fashion", "")] == ("UNAVAILABLE", "unloaded")
    ready = await v2.ModelReady(pb.ModelReadyRequest(name="fashion"))
    assert not ready.ready

    await v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="fashion"))
    response = await v2.ModelInfer(infer_request("fashion", images[:1]))
    assert response.model_version == "1"


async def test_loading_an_unknown_model_is_not_found(v2: Any) -> None:
    with pytest.raises(aio.AioRpcError) as raised:
        await v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"))
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


async def test_a_failed_load_keeps_the_old_version_serving(
    v2: Any, repository: Path, session_model: Path, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    write_broken(repository, "mnist", 2, source=session_model)
    with pytest.raises(aio.AioRpcError) as raised:
        await v2.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"))
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "keep serving" in str(raised.value.details())
    response = await v2.ModelInfer(infer_request("mnist", images[:1]))
    assert response.model_version == "1"
    index = index_of(await v2.RepositoryIndex(pb.RepositoryIndexRequest()))
    assert index[("mnist", "1")] == ("READY", "")
    state, reason = index[("mnist", "2")]
    assert state == "UNAVAILABLE"
    assert "cannot load ONNX model" in reason


async def test_a_staged_version_is_swapped_in_under_load_without_a_failed_call(
    app: ServingApp, repository: Path, session_model: Path, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    images = images[:900]
    # What each version computes, from the files themselves: version 2 scales the logits.
    stage_version(session_model, repository.parent / "references", "mnist", 2)
    references = {
        "1": reference_probabilities(session_model, images),
        "2": reference_probabilities(repository.parent / "references/mnist/2/model.onnx", images),
    }
    stop = asyncio.Event()
    answered = asyncio.Condition()
    versions_seen: list[str] = []
    computed_by: list[str] = []
    failures: list[str] = []

    async def until_answered(count: int) -> None:
        async with answered:
            await answered.wait_for(lambda: len(versions_seen) >= count)

    async def caller(stub: Any, offset: int) -> None:
        for call in range(MAX_CALLS_PER_CALLER):
            if stop.is_set():
                return
            start = (offset + call) % 900
            batch = images[start:][: 1 + call % 3]
            try:
                response = await stub.ModelInfer(infer_request("mnist", batch), timeout=30)
            except aio.AioRpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")
                continue
            window = slice(start, start + len(batch))
            computed_by.append(
                answered_by(
                    probabilities(response), {v: ref[window] for v, ref in references.items()}
                )
            )
            versions_seen.append(response.model_version)
            async with answered:
                answered.notify_all()

    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        callers = [asyncio.create_task(caller(stub, i * 97)) for i in range(CALLERS)]
        started = time.monotonic()
        async with asyncio.timeout(SWAP_LOAD_LIMIT_S):
            await until_answered(100)
            stage_version(session_model, repository, "mnist", 2)
            await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="mnist"))
            answered_at_swap = len(versions_seen)
            await until_answered(answered_at_swap + 100)
        stop.set()
        await asyncio.gather(*callers)
        with pytest.raises(aio.AioRpcError) as retired:
            await stub.ModelInfer(infer_request("mnist", images[:1], version="1"))
    assert failures == []
    assert time.monotonic() - started < SWAP_LOAD_LIMIT_S
    assert set(versions_seen) == {"1", "2"}
    # Each answer's probabilities are those of the version it names: version 2 really ran.
    assert computed_by == versions_seen
    assert versions_seen[-1] == "2"
    assert versions_seen[answered_at_swap + CALLERS :].count("1") == 0
    assert retired.value.code() is grpc.StatusCode.NOT_FOUND


async def test_model_config_and_statistics_rpcs_report_real_figures(
    v2: Any, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    wall_before_ms = time.time_ns() // 1_000_000
    before_ns = time.perf_counter_ns()
    for count in (1, 3, 5):
        await v2.ModelInfer(infer_request("mnist", images[:count]))
    elapsed_ns = time.perf_counter_ns() - before_ns
    wall_after_ms = time.time_ns() // 1_000_000
    bad = infer_request("mnist", images[:1])
    bad.inputs[0].shape[:] = [1, 3, 28, 28]
    with pytest.raises(aio.AioRpcError):
        await v2.ModelInfer(bad)

    config = (await v2.ModelConfig(pb.ModelConfigRequest(name="mnist"))).config
    assert config.name == "mnist"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [(i.name, list(i.dims)) for i in config.input] == [("pixels", [1, 28, 28])]
    assert config.version_policy.WhichOneof("policy_choice") == "latest"

    stats = (await v2.ModelStatistics(pb.ModelStatisticsRequest(name="mnist"))).model_stats
    assert [(s.name, s.version) for s in stats] == [("mnist", "1")]
    (mnist,) = stats
    assert mnist.inference_count == 9
    inference = mnist.inference_stats
    assert inference.success.count == 3
    # Each answered call's time holds its queue wait and its batch's compute, and lies
    # within the loop that made the calls (the server runs in this process, on this clock).
    assert inference.queue.ns + inference.compute_infer.ns <= inference.success.ns <= elapsed_ns
    assert inference.queue.count == 3
    assert inference.compute_infer.count == 3
    # One call at a time: each was a batch of its own.
    assert mnist.execution_count == 3
    assert sorted((b.batch_size, b.compute_infer.count) for b in mnist.batch_stats) == [
        (1, 1),
        (3, 1),
        (5, 1),
    ]
    assert wall_before_ms <= mnist.last_inference <= wall_after_ms
    every = (await v2.ModelStatistics(pb.ModelStatisticsRequest())).model_stats
    assert sorted(s.name for s in every) == ["fashion", "mnist", "regressor"]


async def test_classification_extension_returns_score_index_label(
    v2: Any, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    request = infer_request("fashion", images[:2])
    output = request.outputs.add(name="probabilities")
    output.parameters["classification"].int64_param = 3
    response = await v2.ModelInfer(request)
    (tensor,) = response.outputs
    assert (tensor.datatype, list(tensor.shape)) == ("BYTES", [2, 3])
    plain = probabilities(await v2.ModelInfer(infer_request("fashion", images[:2])))
    raw = response.raw_output_contents[0]
    entries = []
    while raw:
        size = int.from_bytes(raw[:4], "little")
        entries.append(raw[4 : 4 + size].decode())
        raw = raw[4 + size :]
    best = entries[0].split(":")
    assert int(best[1]) == int(plain[0].argmax())
    assert best[2] == FASHION_LABELS[int(best[1])]
    assert float(best[0]) == pytest.approx(float(plain[0].max()), abs=1e-5)


async def test_repository_changes_are_refused_when_the_mode_is_none(
    start_app: StartApp, repository: Path
) -> None:
    app = await start(start_app, repository, model_control_mode="none")
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(aio.AioRpcError) as raised:
            await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="mnist"))
        index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "--model-control-mode none" in str(raised.value.details())
    assert len(index.models) == 3


async def test_poll_mode_serves_a_renamed_version_and_ignores_staging_folders(
    start_app: StartApp, repository: Path, session_model: Path, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    app = await start(start_app, repository, model_control_mode="poll", repository_poll_secs=0.1)
    (repository / "mnist" / ".staging-5").mkdir()
    add_version(session_model, repository, "mnist", ".staging-5")
    stage_version(session_model, repository, "mnist", 3)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # What is tested is the server noticing on its own: ask until it answers with 3.
        versions = []
        for _ in range(600):  # 30 s at most
            response = await stub.ModelInfer(infer_request("mnist", images[:1]))
            versions.append(response.model_version)
            if response.model_version == "3":
                break
            await asyncio.sleep(0.05)
        served = probabilities(response)
        index = index_of(await stub.RepositoryIndex(pb.RepositoryIndexRequest()))
    assert versions[-1] == "3"
    references = {
        version: reference_probabilities(repository / "mnist" / version / "model.onnx", images[:1])
        for version in ("1", "3")
    }
    assert answered_by(served, references) == "3"
    assert ("mnist", "3") in index
    assert not any(version.startswith(".") for _, version in index)


async def test_config_pbtxt_version_policy_and_batching(
    start_app: StartApp, repository: Path, session_model: Path, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    add_version(session_model, repository, "mnist", 2)
    add_version(session_model, repository, "mnist", 3)
    (repository / "mnist" / "config.pbtxt").write_text(
        'name: "mnist"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        "version_policy: { specific: { versions: [1, 3] } }\n"
        "dynamic_batching { max_queue_delay_microseconds: 500 }\n"
    )
    app = await start(start_app, repository)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answers = [
            await stub.ModelInfer(infer_request("mnist", images[:4], version=v))
            for v in ("1", "3", "")
        ]
        with pytest.raises(aio.AioRpcError) as missing:
            await stub.ModelInfer(infer_request("mnist", images[:1], version="2"))
        config = (await stub.ModelConfig(pb.ModelConfigRequest(name="mnist"))).config
    references = {
        version: reference_probabilities(repository / "mnist" / version / "model.onnx", images[:4])
        for version in ("1", "2", "3")
    }
    assert [answer.model_version for answer in answers] == ["1", "3", "3"]
    assert [answered_by(probabilities(answer), references) for answer in answers] == ["1", "3", "3"]
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    assert "versions served: 1, 3" in str(missing.value.details())
    assert config.max_batch_size == 8
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500


async def test_a_broken_model_is_reported_and_the_others_serve(
    start_app: StartApp, repository: Path
) -> None:
    write_broken(repository, "broken")
    (repository / "fashion" / "config.pbtxt").write_text("max_batch_size: [oops")
    app = await start(start_app, repository)
    async with aio.insecure_channel(app.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        index = index_of(await stub.RepositoryIndex(pb.RepositoryIndexRequest()))
    assert index[("mnist", "1")] == ("READY", "")
    assert index[("broken", "1")][0] == "UNAVAILABLE"
    assert "cannot load ONNX model" in index[("broken", "1")][1]
    assert index[("fashion", "")][0] == "UNAVAILABLE"
    assert "config.pbtxt" in index[("fashion", "")][1]


async def test_metrics_carry_model_and_version_and_a_state_per_version(
    app: ServingApp, v2: Any, sample_digits: tuple[Any, Any]
) -> None:
    images, _ = sample_digits
    await v2.ModelInfer(infer_request("fashion", images[:2]))
    sample = app.registry.get_sample_value
    labels = {"protocol": "grpc", "method": "ModelInfer", "model": "fashion", "version": "1"}
    assert sample("mnist_serving_requests_total", {**labels, "code": "OK"}) == 1
    assert sample("mnist_serving_batch_size_sum", {"model": "fashion", "version": "1"}) == 2
    assert (
        sample("mnist_serving_model_state", {"model": "fashion", "version": "1", "state": "READY"})
        == 1
    )
    await v2.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="fashion"))
    state = {"model": "fashion", "version": "1"}
    assert sample("mnist_serving_model_state", {**state, "state": "READY"}) == 0
    assert sample("mnist_serving_model_state", {**state, "state": "UNAVAILABLE"}) == 1


async def test_an_ambiguous_default_model_fails_at_start(
    start_app: StartApp, repository: Path
) -> None:
    for name in ("mnist",):
        (repository / name).rename(repository / f"{name}-old")
    with pytest.raises(ModelLoadError, match="--default-model"):
        await start(start_app, repository)
    app = await start(start_app, repository, default_model="fashion")
    assert app.models.default_model == "fashion"
