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
    H2LOAD_HTTP_NAME,
    H2LOAD_V2_NAME,
    OPEN_LOOP_PREFIX,
    REFERENCE_UNARY,
    STREAM_NAME,
    V2_NAME,
)
from bench.scenarios import H2LOAD

# Issue 7's targets.
UNARY_VS_ECHO_TARGET = 0.8
UNARY_VS_ECHO_MULTI_WORKER_TARGET = 1.2
UNARY_P99_TARGET_MS = 20.0
STREAM_VS_UNARY_TARGET = 3.0
BATCH_VS_ORT_TARGET = 0.7
V2_VS_CLASSIFY_TARGET = 0.9  # "within 10%"
INT8_VS_FP32_TARGET = 2.0
# Issue 13's targets, on the h2load rows of one run.
V2_CPU_VS_ECHO_TARGET = 1.3  # the grpc.aio front (--grpc-front grpcio)
# The native front (the default): below grpc.aio's own floor, near pygrpc-native's.
NATIVE_V2_CPU_VS_ECHO_TARGET = 0.5
NATIVE_V2_CPU_VS_NATIVE_ECHO_TARGET = 2.0
# Against the minimal full path (bench/minimal_path.py), the native front (issue 27).
NATIVE_V2_CPU_VS_MINIMAL_PATH_TARGET = 1.3
NATIVE_VS_GRPCIO_RATE_TARGET = 2.5  # req/s, the defaults against --grpc-front grpcio
TRACING_CPU_TARGET = 1.25  # CPU/req, --tracing on (every call sampled) against the defaults
# Model monitoring (issue 28): the defaults (monitoring on) against --drift-window 0 (off),
# CPU per request; a shadow of equal cost (bench/shadow_repository.py) against the defaults,
# p99 of the h2load V2 row (64 in flight).
MONITORING_CPU_TARGET = 1.05
SHADOW_P99_TARGET = 1.2
H2LOAD_P99_TARGET_MS = 25.0
NATIVE_H2LOAD_P99_TARGET_MS = 15.0
HTTP_CPU_VS_ASGI_ECHO_TARGET = 3.0
HTTP_CPU_VS_GRPC_TARGET = 0.5
WORKERS_SCALE_TARGET = 1.7  # req/s, --workers N against --workers 1
DEFAULTS_VS_ONE_WORKER_TARGET = 1.7  # req/s, the defaults against --workers 1
CPU_KEY = "server_cpu_us_per_request"
RATE_KEY = "requests_per_s"
INT8_CONFIG = "ONNX Runtime in process"
INT8_ROW = "INT8 vs FP32"
ORT_REFERENCE_BATCH = str(BATCH_IMAGES)
AT_LEAST = ">="
AT_MOST = "<="
WORKERS_FLAG = re.compile(r"--workers[= ](\S+)")
GRPCIO_FRONT_FLAG = re.compile(r"--grpc-front[= ]grpcio\b")
TRACING_ON_FLAG = re.compile(r"--tracing[= ]on\b")
MONITORING_OFF_FLAG = re.compile(r"--drift-window[= ]0\b")
SHADOW_REPOSITORY_FLAG = re.compile(r"--model-repository[= ]\S*shadow")

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
    """A figure of a scenario that got answers (None when it is missing or unmeasured)."""
    scenario = scenarios.get(name)
    if scenario is None or not scenario["requests_ok"] or scenario.get(key) is None:
        return None
    return float(scenario[key])


def _divide(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def workers_flag(server_args: Sequence[str]) -> int | None:
    """The number a configuration's --workers flag sets (None: no flag, or not a number)."""
    match = WORKERS_FLAG.search(" ".join(server_args))
    return int(match.group(1)) if match and match.group(1).isdigit() else None


def grpcio_front(server_args: Sequence[str]) -> bool:
    """Whether a configuration serves gRPC with grpc.aio (else the native front: the bench
    runs without TLS, where --grpc-front auto picks it)."""
    return GRPCIO_FRONT_FLAG.search(" ".join(server_args)) is not None


def tracing_on(server_args: Sequence[str]) -> bool:
    return TRACING_ON_FLAG.search(" ".join(server_args)) is not None


def workers_in(server_args: Sequence[str], cores: int = 1) -> int:
    """The worker processes a configuration runs: its --workers number; absent or `auto`
    (the server's default), one per core of the machine that ran it (`cores`)."""
    return workers_flag(server_args) or cores


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
            if workers_in(server["server_args"], document.get("machine", {}).get("cores", 1)) > 1
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
            *_h2load_ratios(
                label,
                scenarios,
                echo,
                _by_name(document["http_echo"]),
                None if grpcio_front(server["server_args"]) else _by_name(document["native_echo"]),
                None
                if grpcio_front(server["server_args"])
                else _by_name(document.get("minimal_path", [])),
            ),
        ]
    return ratios + _scaling_ratios(document["servers"]) + _config_ratios(document["servers"])


def _p99(scenarios: Mapping[str, Mapping[str, Any]], name: str) -> float | None:
    scenario = scenarios.get(name)
    if scenario is None or not scenario["requests_ok"] or not scenario["latency_ms"]:
        return None
    return float(scenario["latency_ms"]["p99_ms"])


def _h2load_ratios(
    label: str,
    scenarios: Mapping[str, Mapping[str, Any]],
    echo: Mapping[str, Mapping[str, Any]],
    http_echo: Mapping[str, Mapping[str, Any]],
    native_echo: Mapping[str, Mapping[str, Any]] | None,
    minimal_path: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Ratio]:
    """Per-request CPU against the floors and between the protocols (issue 13), and for the
    native front (`native_echo` given) against both gRPC floors (issue 21)."""
    v2_cpu = _rate(scenarios, H2LOAD_V2_NAME, CPU_KEY)
    http_cpu = _rate(scenarios, H2LOAD_HTTP_NAME, CPU_KEY)
    native = native_echo is not None
    ratios = [
        Ratio(
            f"CPU/req / echo floor's ({H2LOAD_V2_NAME})",
            label,
            H2LOAD_V2_NAME,
            _divide(v2_cpu, _rate(echo, H2LOAD_V2_NAME, CPU_KEY)),
            NATIVE_V2_CPU_VS_ECHO_TARGET if native else V2_CPU_VS_ECHO_TARGET,
            AT_MOST,
        ),
    ]
    if native_echo is not None:
        ratios.append(
            Ratio(
                f"CPU/req / native echo floor's ({H2LOAD_V2_NAME})",
                label,
                H2LOAD_V2_NAME,
                _divide(v2_cpu, _rate(native_echo, H2LOAD_V2_NAME, CPU_KEY)),
                NATIVE_V2_CPU_VS_NATIVE_ECHO_TARGET,
                AT_MOST,
            )
        )
    if minimal_path:
        ratios.append(
            Ratio(
                f"CPU/req / minimal full path's ({H2LOAD_V2_NAME})",
                label,
                H2LOAD_V2_NAME,
                _divide(v2_cpu, _rate(minimal_path, H2LOAD_V2_NAME, CPU_KEY)),
                NATIVE_V2_CPU_VS_MINIMAL_PATH_TARGET,
                AT_MOST,
            )
        )
    return [
        *ratios,
        Ratio(
            f"{H2LOAD_V2_NAME} p99 ms",
            label,
            H2LOAD_V2_NAME,
            _p99(scenarios, H2LOAD_V2_NAME),
            NATIVE_H2LOAD_P99_TARGET_MS if native else H2LOAD_P99_TARGET_MS,
            AT_MOST,
        ),
        Ratio(
            "HTTP binary CPU/req / ASGI echo's",
            label,
            H2LOAD_HTTP_NAME,
            _divide(http_cpu, _rate(http_echo, H2LOAD_HTTP_NAME, CPU_KEY)),
            HTTP_CPU_VS_ASGI_ECHO_TARGET,
            AT_MOST,
        ),
        Ratio(
            "HTTP binary CPU/req / gRPC V2's",
            label,
            H2LOAD_HTTP_NAME,
            _divide(http_cpu, v2_cpu),
            HTTP_CPU_VS_GRPC_TARGET,
            AT_MOST,
        ),
    ]


def _config_ratios(servers: Sequence[Mapping[str, Any]]) -> list[Ratio]:
    """The defaults against a --grpc-front grpcio configuration (h2load V2 req/s), and a
    --tracing on configuration against the defaults (CPU per request), when the run has them."""
    defaults = next((s for s in servers if not s["server_args"]), None)
    if defaults is None:
        return []
    default_rows = _by_name(defaults["scenarios"])
    ratios = []
    for server in servers:
        rows = _by_name(server["scenarios"])
        if grpcio_front(server["server_args"]):
            ratios.append(
                Ratio(
                    f"defaults req/s / {server['label']}'s",
                    defaults["label"],
                    H2LOAD_V2_NAME,
                    _divide(
                        _rate(default_rows, H2LOAD_V2_NAME, RATE_KEY),
                        _rate(rows, H2LOAD_V2_NAME, RATE_KEY),
                    ),
                    NATIVE_VS_GRPCIO_RATE_TARGET,
                    AT_LEAST,
                )
            )
        if tracing_on(server["server_args"]):
            for name in (H2LOAD_V2_NAME, H2LOAD_HTTP_NAME):
                ratios.append(
                    Ratio(
                        f"CPU/req ({name}) / the defaults'",
                        server["label"],
                        name,
                        _divide(_rate(rows, name, CPU_KEY), _rate(default_rows, name, CPU_KEY)),
                        TRACING_CPU_TARGET,
                        AT_MOST,
                    )
                )
        ratios += _monitoring_ratios(defaults, server)
    return ratios


def _monitoring_ratios(defaults: Mapping[str, Any], server: Mapping[str, Any]) -> list[Ratio]:
    """Monitoring on (the defaults) against off (--drift-window 0), CPU per request; a shadow
    configuration's h2load V2 p99 against the defaults'."""
    default_rows = _by_name(defaults["scenarios"])
    rows = _by_name(server["scenarios"])
    args = " ".join(server["server_args"])
    if MONITORING_OFF_FLAG.search(args):
        return [
            Ratio(
                f"defaults CPU/req ({H2LOAD_V2_NAME}) / {server['label']}'s",
                defaults["label"],
                H2LOAD_V2_NAME,
                _divide(
                    _rate(default_rows, H2LOAD_V2_NAME, CPU_KEY),
                    _rate(rows, H2LOAD_V2_NAME, CPU_KEY),
                ),
                MONITORING_CPU_TARGET,
                AT_MOST,
            )
        ]
    if SHADOW_REPOSITORY_FLAG.search(args):
        return [
            Ratio(
                f"p99 ({H2LOAD_V2_NAME}) with a shadow / the defaults'",
                server["label"],
                H2LOAD_V2_NAME,
                _divide(_p99(rows, H2LOAD_V2_NAME), _p99(default_rows, H2LOAD_V2_NAME)),
                SHADOW_P99_TARGET,
                AT_MOST,
            )
        ]
    return []


def _scaling_ratios(servers: Sequence[Mapping[str, Any]]) -> list[Ratio]:
    """h2load V2 req/s of the defaults and of --workers N against --workers 1, when a
    configuration of the run sets --workers 1."""
    one = next((s for s in servers if workers_flag(s["server_args"]) == 1), None)
    if one is None:
        return []
    base = _rate(_by_name(one["scenarios"]), H2LOAD_V2_NAME, RATE_KEY)
    ratios = []
    for server in servers:
        workers = workers_flag(server["server_args"])
        rate = _rate(_by_name(server["scenarios"]), H2LOAD_V2_NAME, RATE_KEY)
        if not server["server_args"]:
            name, target = "defaults req/s / --workers 1's", DEFAULTS_VS_ONE_WORKER_TARGET
        elif workers is not None and workers > 1:
            name, target = f"--workers {workers} req/s / --workers 1's", WORKERS_SCALE_TARGET
        else:
            continue
        ratios.append(
            Ratio(name, server["label"], H2LOAD_V2_NAME, _divide(rate, base), target, AT_LEAST)
        )
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
    if spec.get("load_generator") == H2LOAD:
        if spec["http1"]:
            return f"h2load --h1, {spec['connections']} conns"
        return f"h2load, {spec['connections']} conns x {spec['streams']} streams"
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
    for scenario in document["native_echo"]:
        rows.append(_scenario_row("native echo", scenario, ratios))
    for scenario in document.get("minimal_path", []):
        rows.append(_scenario_row("minimal path", scenario, ratios))
    for scenario in document["http_echo"]:
        rows.append(_scenario_row("ASGI echo", scenario, ratios))
    for server in document["servers"]:
        for scenario in server["scenarios"]:
            rows.append(_scenario_row(server["label"], scenario, ratios))
    return "\n".join(rows)


def render_ratio_lines(ratios: Sequence[Ratio]) -> list[str]:
    """One line per target: `config: name = value (target, met)`."""
    return [f"{ratio.config}: {ratio.describe()}" for ratio in ratios]


def render_docs_section(
    document: Mapping[str, Any], table: str, plot_name: str | None, ratios: Sequence[Ratio] = ()
) -> str:
    machine = document["machine"]
    settings = document["settings"]
    lines = [
        f"Measured {document['created_at']} on {machine['cpu_model']} "
        f"({machine['cores']} cores usable; {machine['platform']}; Python {machine['python']}, "
        f"grpcio {machine['grpcio']}, onnxruntime {machine['onnxruntime']}).",
        "",
        f"Command: `{document['command']}`. Each scenario: {settings['warmup_s']:g} s warm-up, "
        f"then {settings['duration_s']:g} s measured; load over loopback, on the same cores "
        "as the server: rows named *h2load* from h2load (a C client, a few µs per call), "
        "the others from Python client processes (bench/loadgen.py).",
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
        "Targets:",
        "",
        *(f"- {line}" for line in render_ratio_lines(ratios)),
        "",
        "Ceilings: *ONNX Runtime in process* is the model alone (best 0.25 s slice per batch "
        "size); *echo server* is a bare grpc.aio server on uvloop answering the same RPCs "
        "(Classify, ClassifyStream and V2 ModelInfer) with the request bytes, the grpc.aio "
        "front's floor; *native echo* is a bare pygrpc-native front (bench/native_echo.py) "
        "answering the same bytes from one thread that takes the calls in batches, the "
        "native front's floor; *minimal path* is the same native front parsing each V2 "
        "request, running one ONNX Runtime batch of whatever is waiting and answering each "
        "call (bench/minimal_path.py), the floor of the full gRPC path; "
        "*ASGI echo* is a bare ASGI app echoing the body on the "
        "server's HTTP stack, the HTTP floor. Open-loop rows send at a fixed rate (Poisson) "
        "and time each request from its scheduled send time. *Server CPU* is the server's "
        "process tree CPU time (utime + stime of the parent and its workers) over the window "
        "divided by requests completed in it.",
        "",
        "*h2load* rows: a warm-up run, then a fixed number of calls (about the measured "
        "duration at the warm-up's rate) that all complete; latency percentiles from h2load's "
        "per-request log. h2load counts HTTP statuses only (a gRPC status travels in "
        "trailers), so errors = calls sent - OK replies counted by the service itself "
        '(the server\'s `mnist_serving_requests_total{code="OK"}` for the method, the '
        "echo servers' reply counts); a row with errors fails the run.",
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
