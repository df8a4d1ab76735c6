"""Argument parsing and the scenario plan of `make bench`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import plan
from bench.loadgen import build_request, plan_shares
from bench.run import parse_args, resolve_model, server_configs, settings_from
from bench.scenarios import Kind, Mode, Scenario


def test_defaults_run_a_full_benchmark() -> None:
    args = parse_args([])
    settings = settings_from(args)
    assert settings.duration_s == pytest.approx(8.0)
    assert settings.open_loop_fractions == plan.OPEN_LOOP_FRACTIONS
    assert not args.no_docs
    assert server_configs(args.server_args) == [("default", [])]


def test_quick_is_shorter_and_explicit_duration_wins() -> None:
    quick = settings_from(parse_args(["--quick"]))
    assert quick.duration_s == pytest.approx(plan.QUICK_DURATION_S)
    assert len(quick.open_loop_fractions) < len(plan.OPEN_LOOP_FRACTIONS)
    assert settings_from(parse_args(["--quick", "--duration", "3"])).duration_s == 3.0


def test_server_args_pass_through_and_compare() -> None:
    args = parse_args(["--server-args=", "--server-args", "--workers 2", "--server-args="])
    assert server_configs(args.server_args) == [
        ("default", []),
        ("--workers 2", ["--workers", "2"]),
        ("default #3", []),
    ]


@pytest.mark.parametrize(
    "argv", [["--duration", "0"], ["--warmup", "-1"], ["--client-processes", "-2"]]
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2


def test_resolve_model_picks_the_highest_version(tmp_path: Path) -> None:
    for version in ("1", "2", "10", "notes"):
        (tmp_path / "mnist" / version).mkdir(parents=True)
    for version in ("1", "2"):
        (tmp_path / "mnist" / version / "model.onnx").write_bytes(b"x")
    assert resolve_model(tmp_path, "mnist") == tmp_path / "mnist" / "2" / "model.onnx"
    with pytest.raises(FileNotFoundError, match="make model"):
        resolve_model(tmp_path, "other")


def test_plan_matches_the_issue() -> None:
    settings = plan.BenchSettings(cores=2)
    names = [s.name for s in plan.server_scenarios(settings)]
    assert names == [
        "unary c=1",
        "unary c=16",
        "unary c=64",
        plan.STREAM_NAME,
        plan.BATCH_NAME,
        plan.V2_NAME,
    ]
    assert plan.V2_NAME not in [s.name for s in plan.server_scenarios(settings, with_v2=False)]
    stream = next(s for s in plan.server_scenarios(settings) if s.kind is Kind.CLASSIFY_STREAM)
    assert stream.in_flight == plan.REFERENCE_CONCURRENCY
    single = next(s for s in plan.server_scenarios(settings) if s.concurrency == 1)
    assert single.client_processes == 1
    echo = plan.echo_scenarios(settings)
    assert all(not s.verify_replies for s in echo)


def test_open_loop_rates_follow_the_peak() -> None:
    settings = plan.BenchSettings(cores=2, open_loop_fractions=(0.5, 1.0))
    scenarios = plan.open_loop_scenarios(settings, 2000.0)
    assert [s.rate for s in scenarios] == [1000.0, 2000.0]
    assert all(s.mode is Mode.OPEN for s in scenarios)
    assert plan.open_loop_scenarios(settings, 0.0) == []


def test_scenario_validation() -> None:
    with pytest.raises(ValueError, match="rate > 0"):
        Scenario(name="x", kind=Kind.CLASSIFY_UNARY, mode=Mode.OPEN)
    with pytest.raises(ValueError, match="closed-loop only"):
        Scenario(name="x", kind=Kind.CLASSIFY_STREAM, mode=Mode.OPEN, rate=5)
    with pytest.raises(ValueError, match="client_processes"):
        Scenario(name="x", kind=Kind.CLASSIFY_UNARY, concurrency=1, client_processes=2)


def test_shares_split_callers_rate_and_budget() -> None:
    closed = Scenario(
        name="x", kind=Kind.CLASSIFY_UNARY, concurrency=5, client_processes=2, max_requests=11
    )
    shares = plan_shares(closed)
    assert [s.concurrency for s in shares] == [3, 2]
    assert sum(s.max_requests for s in shares) == 11
    opened = Scenario(
        name="y", kind=Kind.CLASSIFY_UNARY, mode=Mode.OPEN, rate=900, client_processes=3
    )
    assert [s.rate for s in plan_shares(opened)] == [300.0, 300.0, 300.0]


def test_requests_are_what_the_server_expects() -> None:
    from mnist_serving_proto import classifier_pb2

    method, payload = build_request(
        Scenario(name="x", kind=Kind.CLASSIFY_UNARY, images_per_request=3)
    )
    assert method == "/mnist_serving.v1.Classifier/Classify"
    request = classifier_pb2.ClassifyRequest.FromString(payload)
    assert [len(image.pixels) for image in request.images] == [784, 784, 784]
    method, payload = build_request(Scenario(name="y", kind=Kind.CLASSIFY_STREAM))
    assert method.endswith("/ClassifyStream")


def test_v2_request_is_raw_uint8() -> None:
    from mnist_serving_proto import open_inference_pb2

    method, payload = build_request(Scenario(name="v", kind=Kind.V2_UNARY, images_per_request=2))
    assert method == "/inference.GRPCInferenceService/ModelInfer"
    request = open_inference_pb2.ModelInferRequest.FromString(payload)
    assert request.model_name == "mnist"
    assert request.inputs[0].datatype == "UINT8"
    assert list(request.inputs[0].shape) == [2, 1, 28, 28]
    assert len(request.raw_input_contents[0]) == 2 * 784
