"""Turn a results document into the performance targets' ratios, one table,
docs/benchmarks.md and a plot."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.plan import (
    BATCH_IMAGES,
    BATCH_NAME,
    OPEN_LOOP_PREFIX,
    REFERENCE_UNARY,
    STREAM_NAME,
    V2_NAME,
)

# Issue 7's targets.
UNARY_VS_ECHO_TARGET = 0.8
UNARY_VS_ECHO_MULTI_WORKER_TARGET = 1.2
UNARY_P99_TARGET_MS = 20.0
STREAM_VS_UNARY_TARGET = 3.0
BATCH_VS_ORT_TARGET = 0.7
V2_VS_CLASSIFY_TARGET = 0.9  # "within 10%"
INT8_VS_FP32_TARGET = 2.0
INT8_CONFIG = "ONNX Runtime in process"
INT8_ROW = "INT8 vs FP32"
ORT_REFERENCE_BATCH = str(BATCH_IMAGES)
AT_LEAST = ">="
AT_MOST = "<="
WORKERS_FLAG = re.compile(r"--workers[= ](\d+)")

DOCS_BEGIN = "<!-- bench:begin (written by `make bench`; edit outside these markers) -->"
DOCS_END = "<!-- bench:end -->"
PLOT_DPI = 120
PLOT_SIZE_IN = (8.0, 5.0)


@dataclass(frozen=True)
class Ratio:
    """One of the performance targets, measured."""

    name: str
    config: str
    scenario: str  # the table row it belongs to
    value: float | None
    target: float
    comparison: str

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        if self.comparison == AT_LEAST:
            return self.value >= self.target
        return self.value <= self.target

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}

    def describe(self) -> str:
        mark = {True: "met", False: "MISSED", None: "n/a"}[self.met]
        value = "n/a" if self.value is None else f"{self.value:.2f}"
        return f"{self.name} = {value} (target {self.comparison} {self.target:g}, {mark})"


def _by_name(scenarios: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {scenario["name"]: scenario for scenario in scenarios}


def _rate(scenarios: Mapping[str, Mapping[str, Any]], name: str, key: str) -> float | None:
    scenario = scenarios.get(name)
    if scenario is None or not scenario["requests_ok"]:
        return None
    return float(scenario[key])


def _divide(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def workers_in(server_args: Sequence[str]) -> int:
    """The --workers value a server configuration sets (1 when absent)."""
    match = WORKERS_FLAG.search(" ".join(server_args))
    return int(match.group(1)) if match else 1


def compute_ratios(document: Mapping[str, Any]) -> list[Ratio]:
    """Issue 7's targets for every server configuration in a results document."""
    echo = _by_name(document["echo"])
    ort = document.get("ort_ceiling") or {}
    ort_at_reference = ort.get("images_per_s", {}).get(ORT_REFERENCE_BATCH)
    echo_unary = _rate(echo, REFERENCE_UNARY, "requests_per_s")
    ratios: list[Ratio] = _int8_ratios(ort)
    for server in document["servers"]:
        label = server["label"]
        scenarios = _by_name(server["scenarios"])
        unary = _rate(scenarios, REFERENCE_UNARY, "requests_per_s")
        echo_target = (
            UNARY_VS_ECHO_MULTI_WORKER_TARGET
            if workers_in(server["server_args"]) > 1
            else UNARY_VS_ECHO_TARGET
        )
        reference = scenarios.get(REFERENCE_UNARY)
        p99 = None
        if reference is not None and reference["latency_ms"] is not None:
            p99 = float(reference["latency_ms"]["p99_ms"])
        ratios += [
            Ratio(
                f"{REFERENCE_UNARY} / echo {REFERENCE_UNARY}",
                label,
                REFERENCE_UNARY,
                _divide(unary, echo_unary),
                echo_target,
                AT_LEAST,
            ),
            Ratio(
                f"{REFERENCE_UNARY} p99 ms",
                label,
                REFERENCE_UNARY,
                p99,
                UNARY_P99_TARGET_MS,
                AT_MOST,
            ),
            Ratio(
                f"stream / {REFERENCE_UNARY}",
                label,
                STREAM_NAME,
                _divide(_rate(scenarios, STREAM_NAME, "requests_per_s"), unary),
                STREAM_VS_UNARY_TARGET,
                AT_LEAST,
            ),
            Ratio(
                f"{BATCH_NAME} images/s / ORT batch {ORT_REFERENCE_BATCH}",
                label,
                BATCH_NAME,
                _divide(_rate(scenarios, BATCH_NAME, "images_per_s"), ort_at_reference),
                BATCH_VS_ORT_TARGET,
                AT_LEAST,
            ),
            Ratio(
                f"V2 / Classify at c={REFERENCE_UNARY.split('=')[-1]}",
                label,
                V2_NAME,
                _divide(_rate(scenarios, V2_NAME, "requests_per_s"), unary),
                V2_VS_CLASSIFY_TARGET,
                AT_LEAST,
            ),
        ]
    return ratios


def _best_images_per_s(ceiling: Mapping[str, Any]) -> float:
    return max(ceiling["images_per_s"].values(), default=0.0)


def _int8_ratios(ort: Mapping[str, Any]) -> list[Ratio]:
    """INT8 against FP32 images/s in process (best batch size each), when both were measured."""
    if not ort:
        return []
    models = [ort, *ort.get("other_versions", [])]
    int8 = [m for m in models if m.get("quantized")]
    fp32 = [m for m in models if not m.get("quantized")]
    if not int8 or not fp32:
        return []
    value = _divide(_best_images_per_s(int8[-1]), _best_images_per_s(fp32[-1]))
    return [
        Ratio(
            "INT8 / FP32 images/s in process",
            INT8_CONFIG,
            INT8_ROW,
            value,
            INT8_VS_FP32_TARGET,
            AT_LEAST,
        )
    ]


def _number(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _load(scenario: Mapping[str, Any]) -> str:
    spec = scenario["scenario"]
    if spec["mode"] == "open":
        return f"{spec['rate']:,.0f}/s {spec['arrival']}"
    if spec["kind"] == "classify_stream":
        return f"{spec['concurrency']} streams x {spec['window']}"
    images = spec["images_per_request"]
    suffix = f", {images} img/req" if images > 1 else ""
    callers = "caller" if spec["concurrency"] == 1 else "callers"
    return f"{spec['concurrency']} {callers}{suffix}"


def _errors(scenario: Mapping[str, Any]) -> str:
    errors = scenario["errors"]
    return ", ".join(f"{code} {count}" for code, count in errors.items()) or "0"


TABLE_HEADER = (
    "| config | scenario | load | req/s | images/s | p50 ms | p95 ms | p99 ms | max ms "
    "| errors | server CPU µs/req | mean batch | vs target |\n"
    "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"
)


def _scenario_row(config: str, scenario: Mapping[str, Any], ratios: Sequence[Ratio]) -> str:
    latency = scenario["latency_ms"] or {}
    targets = "; ".join(
        ratio.describe()
        for ratio in ratios
        if ratio.config == config and ratio.scenario == scenario["name"]
    )
    cells = [
        config,
        scenario["name"],
        _load(scenario),
        _number(scenario["requests_per_s"]),
        _number(scenario["images_per_s"]),
        _number(latency.get("p50_ms"), 2),
        _number(latency.get("p95_ms"), 2),
        _number(latency.get("p99_ms"), 2),
        _number(latency.get("max_ms"), 2),
        _errors(scenario),
        _number(scenario.get("server_cpu_us_per_request")),
        _number(scenario.get("mean_batch_size"), 1),
        targets,
    ]
    return "| " + " | ".join(cells) + " |"


def render_table(document: Mapping[str, Any], ratios: Sequence[Ratio]) -> str:
    """One markdown table: the ceilings, every scenario, and the targets on their rows."""
    rows = [TABLE_HEADER]
    ort = document.get("ort_ceiling")
    if ort:
        for ceiling in [*ort.get("other_versions", []), ort]:
            name = "ONNX Runtime in process" + (" (INT8)" if ceiling.get("quantized") else "")
            for batch, images_per_s in ceiling["images_per_s"].items():
                rows.append(
                    f"| ceiling | {name} | batch {batch} | "
                    f"{_number(images_per_s / int(batch))} | {_number(images_per_s)} "
                    "| | | | | | | | |"
                )
        rows += [
            f"| ceiling | {INT8_ROW} | best batch | | | | | | | | | | {ratio.describe()} |"
            for ratio in ratios
            if ratio.scenario == INT8_ROW
        ]
    for scenario in document["echo"]:
        rows.append(_scenario_row("echo server", scenario, ratios))
    for server in document["servers"]:
        for scenario in server["scenarios"]:
            rows.append(_scenario_row(server["label"], scenario, ratios))
    return "\n".join(rows)


def render_docs_section(document: Mapping[str, Any], table: str, plot_name: str | None) -> str:
    machine = document["machine"]
    settings = document["settings"]
    lines = [
        f"Measured {document['created_at']} on {machine['cpu_model']} "
        f"({machine['cores']} cores usable; {machine['platform']}; Python {machine['python']}, "
        f"grpcio {machine['grpcio']}, onnxruntime {machine['onnxruntime']}).",
        "",
        f"Command: `{document['command']}`. Each scenario: {settings['warmup_s']:g} s warm-up, "
        f"then {settings['duration_s']:g} s measured; load from "
        "separate client processes over loopback, on the same cores as the server.",
        "",
        "Server configurations: "
        + "; ".join(
            f"`{server['label']}` = `{' '.join(server['server_args']) or '(defaults)'}`"
            for server in document["servers"]
        )
        + ".",
        "",
        table,
        "",
        "Ceilings: *ONNX Runtime in process* is the model alone (best 0.25 s slice per batch "
        "size); *echo server* is a bare grpc.aio server answering the same RPCs with the "
        "request bytes. Open-loop rows send at a fixed rate (Poisson) and time each request "
        "from its scheduled send time. *Server CPU* is the server's process tree CPU time "
        "over the window divided by requests completed in it.",
    ]
    if plot_name:
        lines += ["", f"![latency against throughput]({plot_name})"]
    return "\n".join(lines)


DOCS_PREAMBLE = """# Benchmarks

How fast the server is against its two ceilings on this machine, as `make bench`
measured it. Regenerate with `make bench` (a few minutes) or `make bench-quick`;
options: `.venv/bin/python -m bench.run --help`. Raw results: `bench/results/*.json`.

"""


def write_docs(path: Path, section: str) -> None:
    """Replace the generated section of `path` (between the markers), keeping the rest."""
    generated = f"{DOCS_BEGIN}\n{section}\n{DOCS_END}"
    if path.exists():
        current = path.read_text()
        if DOCS_BEGIN in current and DOCS_END in current:
            before = current[: current.index(DOCS_BEGIN)]
            after = current[current.index(DOCS_END) + len(DOCS_END) :]
            path.write_text(before + generated + after)
            return
    path.write_text(DOCS_PREAMBLE + generated + "\n")


def plot_latency_throughput(document: Mapping[str, Any], path: Path) -> bool:
    """p50 and p99 latency against achieved requests/s over the open-loop sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=PLOT_SIZE_IN)
    plotted = False
    for server in document["servers"]:
        points = sorted(
            (s["requests_per_s"], s["latency_ms"]["p50_ms"], s["latency_ms"]["p99_ms"])
            for s in server["scenarios"]
            if s["name"].startswith(OPEN_LOOP_PREFIX) and s["latency_ms"]
        )
        if not points:
            continue
        rates, p50, p99 = zip(*points, strict=True)
        line = axes.plot(rates, p99, marker="o", label=f"{server['label']} p99")[0]
        axes.plot(
            rates,
            p50,
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"{server['label']} p50",
        )
        plotted = True
    if not plotted:
        plt.close(figure)
        return False
    axes.set_xlabel("achieved single-image Classify requests/s (open loop)")
    axes.set_ylabel("latency (ms, log scale)")
    axes.set_yscale("log")
    axes.axhline(
        UNARY_P99_TARGET_MS, color="grey", linewidth=0.8, linestyle=":", label="p99 target"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    axes.set_title("Latency against throughput")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=PLOT_DPI)
    plt.close(figure)
    return True
