"""Issues 7's, 13's and 21's ratios, the one table and the generated docs section."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from bench.plan import (
    BATCH_NAME,
    H2LOAD_HTTP_NAME,
    H2LOAD_V2_NAME,
    REFERENCE_UNARY,
    STREAM_NAME,
    V2_NAME,
)
from bench.report import (
    DOCS_BEGIN,
    DOCS_END,
    compute_ratios,
    plot_latency_throughput,
    render_docs_section,
    render_ratio_lines,
    render_table,
    workers_flag,
    workers_in,
    write_docs,
)

from .test_bench_results import make_document


def test_ratios_against_the_ceilings() -> None:
    values = {ratio.name: ratio.value for ratio in compute_ratios(make_document())}
    assert values == {
        f"{REFERENCE_UNARY} / echo {REFERENCE_UNARY}": pytest.approx(1000 / 2000),
        f"{REFERENCE_UNARY} p99 ms": pytest.approx(30.0),
        f"stream / {REFERENCE_UNARY}": pytest.approx(4.0),
        # 100 requests/s x 64 images against ORT's 64,000 images/s at batch 64.
        f"{BATCH_NAME} images/s / ORT batch 64": pytest.approx(0.1),
        "V2 / Classify at c=64": pytest.approx(0.95),
        # h2load rows: 700 µs against the echo's 350 µs and the native echo's 50 µs; HTTP
        # 260 µs against 65 and 700.
        f"CPU/req / echo floor's ({H2LOAD_V2_NAME})": pytest.approx(2.0),
        f"CPU/req / native echo floor's ({H2LOAD_V2_NAME})": pytest.approx(14.0),
        f"{H2LOAD_V2_NAME} p99 ms": pytest.approx(30.0),
        "HTTP binary CPU/req / ASGI echo's": pytest.approx(4.0),
        "HTTP binary CPU/req / gRPC V2's": pytest.approx(260 / 700),
    }


def test_each_target_sits_on_its_scenario_row() -> None:
    rows = {ratio.name: ratio.scenario for ratio in compute_ratios(make_document())}
    assert sorted(set(rows.values())) == sorted(
        {REFERENCE_UNARY, STREAM_NAME, BATCH_NAME, V2_NAME, H2LOAD_V2_NAME, H2LOAD_HTTP_NAME}
    )


def test_targets_met_and_missed() -> None:
    met = {ratio.name: ratio.met for ratio in compute_ratios(make_document())}
    assert met == {
        f"{REFERENCE_UNARY} / echo {REFERENCE_UNARY}": False,  # 0.5 < 0.8
        f"{REFERENCE_UNARY} p99 ms": False,  # 30 ms > 20 ms
        f"stream / {REFERENCE_UNARY}": True,  # 4 >= 3
        f"{BATCH_NAME} images/s / ORT batch 64": False,  # 0.1 < 0.7
        "V2 / Classify at c=64": True,  # 0.95 >= 0.9
        f"CPU/req / echo floor's ({H2LOAD_V2_NAME})": False,  # 2.0 > 0.5 (the native front)
        f"CPU/req / native echo floor's ({H2LOAD_V2_NAME})": False,  # 14 > 2
        f"{H2LOAD_V2_NAME} p99 ms": False,  # 30 ms > 15 ms
        "HTTP binary CPU/req / ASGI echo's": False,  # 4 > 3
        "HTTP binary CPU/req / gRPC V2's": True,  # 0.37 <= 0.5
    }


def test_h2load_ratios_need_the_floors() -> None:
    document = make_document()
    document["http_echo"] = []
    document["echo"][1]["server_cpu_us_per_request"] = None
    values = {ratio.name: ratio.value for ratio in compute_ratios(document)}
    assert values[f"CPU/req / echo floor's ({H2LOAD_V2_NAME})"] is None
    assert values["HTTP binary CPU/req / ASGI echo's"] is None
    assert values["HTTP binary CPU/req / gRPC V2's"] == pytest.approx(260 / 700)


def _config(label: str, args: list[str], rate: float) -> dict[str, Any]:
    server = copy.deepcopy(make_document(h2load_v2_rate=rate)["servers"][0])
    return {**server, "label": label, "server_args": args}


def test_workers_scale_and_defaults_against_one_worker() -> None:
    document = make_document()
    document["servers"] = [
        _config("default", [], 3000.0),
        _config("--workers 1", ["--workers", "1"], 1800.0),
        _config("--workers 2", ["--workers", "2"], 3240.0),
        _config("--workers auto", ["--workers", "auto"], 3300.0),
    ]
    scaling = {(r.config, r.name): r for r in compute_ratios(document) if "1's" in r.name}
    assert sorted(scaling) == [
        ("--workers 2", "--workers 2 req/s / --workers 1's"),
        ("default", "defaults req/s / --workers 1's"),
    ]
    defaults = scaling[("default", "defaults req/s / --workers 1's")]
    assert defaults.value == pytest.approx(3000 / 1800)
    assert defaults.met is False
    two = scaling[("--workers 2", "--workers 2 req/s / --workers 1's")]
    assert two.value == pytest.approx(1.8)
    assert two.met is True
    lines = render_ratio_lines(compute_ratios(document))
    assert "--workers 2: --workers 2 req/s / --workers 1's = 1.80 (target >= 1.7, met)" in lines


def test_the_grpcio_front_has_its_own_targets_and_the_defaults_are_compared_with_it() -> None:
    document = make_document()
    document["servers"] = [
        _config("default", [], 3000.0),
        _config("--grpc-front grpcio", ["--grpc-front", "grpcio"], 1000.0),
    ]
    ratios = {(r.config, r.name): r for r in compute_ratios(document)}
    grpcio = "--grpc-front grpcio"
    assert ratios[(grpcio, f"CPU/req / echo floor's ({H2LOAD_V2_NAME})")].target == 1.3
    assert ratios[(grpcio, f"{H2LOAD_V2_NAME} p99 ms")].target == 25.0
    assert (grpcio, f"CPU/req / native echo floor's ({H2LOAD_V2_NAME})") not in ratios
    assert ratios[("default", f"CPU/req / echo floor's ({H2LOAD_V2_NAME})")].target == 0.5
    versus = ratios[("default", f"defaults req/s / {grpcio}'s")]
    assert versus.value == pytest.approx(3.0)
    assert versus.met is True


def test_tracing_on_is_compared_with_the_defaults_per_request() -> None:
    document = make_document()
    traced = _config("--tracing on", ["--tracing", "on"], 3000.0)
    for row in traced["scenarios"]:
        if row.get("server_cpu_us_per_request"):
            row["server_cpu_us_per_request"] *= 1.2
    document["servers"] = [_config("default", [], 3000.0), traced]
    ratios = {r.name: r for r in compute_ratios(document) if r.config == "--tracing on"}
    v2 = ratios[f"CPU/req ({H2LOAD_V2_NAME}) / the defaults'"]
    http = ratios[f"CPU/req ({H2LOAD_HTTP_NAME}) / the defaults'"]
    assert v2.value == pytest.approx(1.2)
    assert http.value == pytest.approx(1.2)
    assert v2.met is True
    assert v2.target == 1.25


def test_no_scaling_ratio_without_a_one_worker_configuration() -> None:
    assert not [r for r in compute_ratios(make_document()) if "--workers 1's" in r.name]


def test_missing_scenario_gives_no_value() -> None:
    document = make_document()
    document["servers"][0]["scenarios"] = [
        s for s in document["servers"][0]["scenarios"] if s["name"] != V2_NAME
    ]
    ratio = next(r for r in compute_ratios(document) if r.scenario == V2_NAME)
    assert ratio.value is None
    assert ratio.met is None
    assert "n/a" in ratio.describe()


def test_multi_worker_configuration_has_the_higher_target() -> None:
    document = make_document()
    document["servers"][0]["server_args"] = ["--workers", "2"]
    ratio = next(r for r in compute_ratios(document) if "echo" in r.name)
    assert ratio.target == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("args", "workers", "flag"),
    [
        ([], 3, None),
        (["--workers", "2"], 2, 2),
        (["--workers=4"], 4, 4),
        (["--max-batch-size", "2"], 3, None),
        (["--workers", "auto"], 3, None),
    ],
)
def test_workers_in(args: list[str], workers: int, flag: int | None) -> None:
    assert workers_in(args, cores=3) == workers
    assert workers_flag(args) == flag


def test_one_table_holds_ceilings_scenarios_and_targets() -> None:
    document = make_document()
    table = render_table(document, compute_ratios(document))
    lines = table.splitlines()
    # Header + separator + 2 ORT rows + 2 echo rows + 1 native echo row + 1 ASGI echo row
    # + 7 server rows.
    assert len(lines) == 2 + 2 + 2 + 1 + 1 + 7
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    unary_row = next(line for line in lines if line.startswith(f"| default | {REFERENCE_UNARY}"))
    assert "MISSED" in unary_row
    assert "64 callers" in unary_row
    h2load_row = next(line for line in lines if line.startswith(f"| default | {H2LOAD_V2_NAME}"))
    assert "h2load, 4 conns x 16 streams" in h2load_row
    assert "| 700 |" in h2load_row
    assert "echo floor's" in h2load_row
    http_row = next(line for line in lines if line.startswith(f"| ASGI echo | {H2LOAD_HTTP_NAME}"))
    assert "h2load --h1, 64 conns" in http_row


def test_docs_section_replaced_between_markers(tmp_path: Path) -> None:
    docs = tmp_path / "benchmarks.md"
    document = make_document()
    section = render_docs_section(document, "TABLE-1", "plot.png", compute_ratios(document))
    write_docs(docs, section)
    first = docs.read_text()
    assert "- default: HTTP binary CPU/req / gRPC V2's = 0.37 (target <= 0.5, met)" in first
    assert first.startswith("# Benchmarks")
    assert "TABLE-1" in first
    assert "![latency against throughput](plot.png)" in first
    assert "Test CPU" in first
    assert "python -m bench.run --quick" in first
    docs.write_text("# Mine\nnotes before\n" + first[first.index(DOCS_BEGIN) :] + "\nnotes after\n")
    write_docs(docs, render_docs_section(document, "TABLE-2", None))
    second = docs.read_text()
    assert second.startswith("# Mine\nnotes before\n")
    assert second.rstrip().endswith("notes after")
    assert "TABLE-2" in second
    assert "TABLE-1" not in second
    assert second.count(DOCS_BEGIN) == second.count(DOCS_END) == 1


def test_plot_needs_open_loop_points(tmp_path: Path) -> None:
    document = make_document()
    assert plot_latency_throughput(document, tmp_path / "none.png") is False
    open_loop = dict(document["servers"][0]["scenarios"][0], name="open-loop 50%")
    document["servers"][0]["scenarios"].append(open_loop)
    path = tmp_path / "plot.png"
    assert plot_latency_throughput(document, path) is True
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_int8_ratio_when_both_precisions_were_measured() -> None:
    document = make_document()
    assert not [r for r in compute_ratios(document) if "INT8" in r.name]
    fp32 = {"quantized": False, "images_per_s": {"1": 20000.0, "64": 50000.0}}
    document["ort_ceiling"] = {
        "quantized": True,
        "images_per_s": {"1": 30000.0, "64": 120000.0},
        "other_versions": [fp32],
    }
    (ratio,) = [r for r in compute_ratios(document) if "INT8" in r.name]
    assert ratio.value == pytest.approx(120000.0 / 50000.0)
    assert ratio.met is True
    table = render_table(document, compute_ratios(document))
    assert "| ceiling | ONNX Runtime in process (INT8) | batch 64 |" in table
    assert "INT8 / FP32 images/s in process = 2.40" in table


def test_batch_totals_add_up_over_the_repositorys_models() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from bench.run import batch_totals
    from mnist_serving_server.metrics import ServerMetrics, VersionObserver

    registry = CollectorRegistry()
    metrics = ServerMetrics(registry)
    served = VersionObserver(metrics, "mnist", "1")
    for size in (4, 6):
        served.on_batch(size, [0.0] * size, 0.001)
    VersionObserver(metrics, "mnist_features", "1")  # loaded, never called: zero samples
    assert batch_totals(generate_latest(registry).decode()) == (10.0, 2.0)
    assert batch_totals("") is None


def test_monitoring_off_and_a_shadow_are_compared_with_the_defaults() -> None:
    document = make_document()
    off = _config("--drift-window 0", ["--drift-window", "0"], 3000.0)
    shadow = _config(
        "--model-repository bench/results/shadow-repository",
        ["--model-repository", "bench/results/shadow-repository"],
        3000.0,
    )
    for row in off["scenarios"]:
        if row.get("server_cpu_us_per_request"):
            row["server_cpu_us_per_request"] /= 1.02
    for row in shadow["scenarios"]:
        if row["name"] == H2LOAD_V2_NAME:
            row["latency_ms"] = {**row["latency_ms"], "p99_ms": row["latency_ms"]["p99_ms"] * 1.3}
    document["servers"] = [_config("default", [], 3000.0), off, shadow]
    ratios = {r.name: r for r in compute_ratios(document)}
    monitoring = ratios[f"defaults CPU/req ({H2LOAD_V2_NAME}) / --drift-window 0's"]
    assert monitoring.config == "default"
    assert monitoring.value == pytest.approx(1.02)
    assert monitoring.met is True
    p99 = ratios[f"p99 ({H2LOAD_V2_NAME}) with a shadow / the defaults'"]
    assert p99.value == pytest.approx(1.3)
    assert p99.target == 1.2
    assert p99.met is False
