"""h2load, the C load generator of the unary rows: request bodies, the command, its report
and per-request log parsed, the services' reply counters, and one measured row.

h2load (Debian's `nghttp2-client`) costs a few µs per call, so on a small machine the
service under test gets the cores (a Python client takes most of one). It sees HTTP
statuses only, and a gRPC status travels in trailers: a failed gRPC call is an HTTP 200
to h2load. So every row proves its replies with the service's own counter of OK replies,
read before and after the measured run: errors = requests h2load sent - OK replies the
service counted, which must be 0.

One row: a warm-up run (`-D`, unmeasured; it also gives the rate), a wait until the
service's counters stop moving (calls cut off at the warm-up's end), then a measured run
of a fixed number of requests (`-n`: about `duration` seconds at the warm-up's rate), so
that every request has its answer before the counters are read again. Latency
percentiles come from h2load's `--log-file` (one line per request); the service's CPU is
its process tree's over the measured run.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.loadgen import (
    CLASSIFY_METHOD,
    MODEL_INFER_METHOD,
    V2_INPUT_NAME,
    build_pixels,
    classify_request_bytes,
    v2_request_bytes,
)
from bench.results import OK_CODE, US_PER_S
from bench.scenarios import Api, H2loadScenario
from bench.stats import MS_PER_S, LatencySummary, summarize_latencies

H2LOAD = "h2load"
INSTALL_HINT = (
    "h2load not found: `make bench-deps` installs it (Debian's nghttp2-client; "
    "apt-get install nghttp2-client)"
)
LOOPBACK = "127.0.0.1"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
# A gRPC message on the wire: 1 byte "compressed" flag, 4 bytes big-endian length.
GRPC_FRAME = struct.Struct(">BI")
UNCOMPRESSED = 0
REQUESTS_SAMPLE = "mnist_serving_requests_total"
# (protocol, method) labels of the server's request counter for each API.
COUNTER_LABELS: dict[Api, tuple[str, str]] = {
    Api.GRPC_V2: ("grpc", "ModelInfer"),
    Api.GRPC_CLASSIFY: ("grpc", "Classify"),
    Api.HTTP_BINARY_V2: ("http", "ModelInfer"),
    Api.HTTP_JSON_V2: ("http", "ModelInfer"),
}
# Codes of the errors row for replies the counters cannot place.
NOT_COUNTED = "NOT_COUNTED"  # sent by h2load, no status counted by the service
UNEXPECTED_OK = "UNEXPECTED_OK"  # more OK replies counted than h2load sent
METRICS_TIMEOUT_S = 10.0
# Calibration when no warm-up is asked for: the rate still has to be known.
MIN_WARMUP_S = 0.2
# The measured run sends at least this many requests per call in flight.
MIN_ROUNDS = 4
# After the warm-up, the counters must stay still this long (the calls h2load cut off).
SETTLE_QUIET_S = 0.2
SETTLE_TIMEOUT_S = 15.0
# h2load's own limit: the expected run time x this, plus the margin.
RUN_TIMEOUT_FACTOR = 4.0
RUN_TIMEOUT_MARGIN_S = 60.0
UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION = r"([0-9.]+)(us|ms|s)"
_FINISHED = re.compile(rf"^finished in {_DURATION}, ([0-9.]+) req/s", re.M)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.M,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.M)
_REQUEST_TIME = re.compile(rf"^time for request:\s+{_DURATION}\s+{_DURATION}\s+{_DURATION}\s+"
                           rf"{_DURATION}", re.M)  # fmt: skip
REQUEST_FIELDS = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
STATUS_FIELDS = ("2xx", "3xx", "4xx", "5xx")
REQUEST_TIME_FIELDS = ("min", "max", "mean", "sd")

Counts = dict[str, float]  # replies by status code
CountReader = Callable[[], Counts]  # reads a service's reply counter


class H2loadError(RuntimeError):
    """h2load is missing, failed, or printed no report."""


def require_h2load() -> str:
    """h2load's path; H2loadError (saying how to install it) when it is not installed."""
    path = shutil.which(H2LOAD)
    if path is None:
        raise H2loadError(INSTALL_HINT)
    return path


# --- requests ------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What h2load sends: path, body (`-d`) and headers (`-H`)."""

    path: str
    body: bytes
    headers: tuple[str, ...]

    def header_args(self) -> list[str]:
        """h2load's `-H` options for the headers."""
        return [part for header in self.headers for part in ("-H", header)]


def grpc_frame(message: bytes) -> bytes:
    """One uncompressed gRPC message frame around a serialized request."""
    return GRPC_FRAME.pack(UNCOMPRESSED, len(message)) + message


def v2_binary_body(pixels: np.ndarray) -> tuple[bytes, int]:
    """Triton's binary tensor form: a JSON header, then the raw UINT8 pixels, and a binary
    output asked for; returns (body, the JSON header's length)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": V2_INPUT_NAME,
                    "datatype": "UINT8",
                    "shape": list(pixels.shape),
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return header + pixels.tobytes(), len(header)


def v2_json_body(pixels: np.ndarray) -> bytes:
    """The pixels as a V2 JSON `data` list (JSON output)."""
    tensor = {
        "name": V2_INPUT_NAME,
        "datatype": "UINT8",
        "shape": list(pixels.shape),
        "data": pixels.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def build_request(api: Api, images: int = 1, model_name: str = "mnist") -> Request:
    """The request of one call of `api` with `images` images (deterministic pixels)."""
    pixels = build_pixels(images)
    if api is Api.GRPC_V2:
        return Request(
            MODEL_INFER_METHOD, grpc_frame(v2_request_bytes(pixels, model_name)), GRPC_HEADERS
        )
    if api is Api.GRPC_CLASSIFY:
        return Request(CLASSIFY_METHOD, grpc_frame(classify_request_bytes(pixels)), GRPC_HEADERS)
    path = f"/v2/models/{model_name}/infer"
    if api is Api.HTTP_BINARY_V2:
        body, header_length = v2_binary_body(pixels)
        headers = (
            "content-type: application/octet-stream",
            f"inference-header-content-length: {header_length}",
        )
        return Request(path, body, headers)
    return Request(path, v2_json_body(pixels), ("content-type: application/json",))


# --- h2load's report and log -------------------------------------------------------


def duration_seconds(value: str, unit: str) -> float:
    """One of h2load's durations ("538us", "65.05ms", "1.2s") in seconds."""
    return float(value) * UNITS_S[unit]


@dataclass(frozen=True)
class H2loadReport:
    """What h2load printed at the end of a run."""

    finished_s: float
    requests_per_s: float
    requests: dict[str, int]  # REQUEST_FIELDS
    status_codes: dict[str, int]  # STATUS_FIELDS
    request_time_ms: dict[str, float]  # REQUEST_TIME_FIELDS

    @property
    def not_succeeded(self) -> int:
        """Requests h2load itself saw fail (connection errors, timeouts, HTTP >= 400)."""
        return self.requests["total"] - self.requests["succeeded"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_report(output: str) -> H2loadReport:
    """h2load's end-of-run report; H2loadError when a line is missing."""
    finished, requests = _FINISHED.search(output), _REQUESTS.search(output)
    status, request_time = _STATUS.search(output), _REQUEST_TIME.search(output)
    if not (finished and requests and status and request_time):
        raise H2loadError(f"no h2load report in its output:\n{output[-2000:]}")
    times = request_time.groups()
    return H2loadReport(
        finished_s=duration_seconds(finished.group(1), finished.group(2)),
        requests_per_s=float(finished.group(3)),
        requests=dict(zip(REQUEST_FIELDS, map(int, requests.groups()), strict=True)),
        status_codes=dict(zip(STATUS_FIELDS, map(int, status.groups()), strict=True)),
        request_time_ms={
            name: duration_seconds(times[2 * i], times[2 * i + 1]) * MS_PER_S
            for i, name in enumerate(REQUEST_TIME_FIELDS)
        },
    )


@dataclass(frozen=True)
class LoggedRequest:
    """One line of h2load's --log-file: start (µs since the epoch), HTTP status, duration."""

    start_us: int
    status: int
    duration_s: float


def parse_log(text: str) -> list[LoggedRequest]:
    """h2load's --log-file: tab-separated start time (µs), status, duration (µs) per line."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            start_us, status, duration_us = (int(field) for field in fields[:3])
        except ValueError:
            raise H2loadError(
                f"h2load log line {number} is not start/status/µs: {line!r}"
            ) from None
        entries.append(LoggedRequest(start_us, status, duration_us / US_PER_S))
    return entries


def log_latency(entries: Sequence[LoggedRequest]) -> LatencySummary | None:
    """Percentiles of the requests answered 2xx (None when there are none)."""
    return summarize_latencies([e.duration_s for e in entries if 200 <= e.status < 300])


# --- the services' reply counters ----------------------------------------------------


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as reply:
        text: str = reply.read().decode()
    return text


def request_counts(metrics_text: str, protocol: str, method: str) -> Counts:
    """The server's finished requests of one protocol and method, by status code, from its
    /metrics (`mnist_serving_requests_total`, summed over models and versions)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: Counts = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == REQUESTS_SAMPLE
                and labels.get("protocol") == protocol
                and labels.get("method") == method
            ):
                code = labels.get("code", "")
                counts[code] = counts.get(code, 0.0) + sample.value
    return counts


def server_counter(metrics_port: int, api: Api) -> CountReader:
    """Reads the server's counts of `api`'s calls from its /metrics."""
    protocol, method = COUNTER_LABELS[api]
    url = f"http://{LOOPBACK}:{metrics_port}/metrics"
    return lambda: request_counts(scrape(url), protocol, method)


def grpc_echo_counter(target: str) -> CountReader:
    """Reads bench.echo_server's count of echoed replies (all OK)."""
    from bench.echo_server import REPLIES_PATH

    def read() -> Counts:
        with grpc.insecure_channel(target) as channel:
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(REPLIES_PATH)
            reply = call(b"", timeout=METRICS_TIMEOUT_S)
        return {OK_CODE: float(reply)}

    return read


def http_echo_counter(port: int) -> CountReader:
    """Reads bench.asgi_echo's count of echoed replies (all OK)."""
    from bench.asgi_echo import REPLIES_PATH

    url = f"http://{LOOPBACK}:{port}{REPLIES_PATH}"
    return lambda: {OK_CODE: float(scrape(url))}


def ok_replies(before: Mapping[str, float], after: Mapping[str, float]) -> int:
    """OK replies the service counted between two readings of its counter."""
    return round(after.get(OK_CODE, 0.0) - before.get(OK_CODE, 0.0))


def count_errors(
    requests: int, before: Mapping[str, float], after: Mapping[str, float]
) -> dict[str, int]:
    """Errors by code over a run that sent `requests` calls, from the service's counters.

    They add up to requests - OK replies counted: the service's non-OK replies by their
    code, then NOT_COUNTED for calls it counted no reply for. UNEXPECTED_OK instead when it
    counted more OK replies than were sent (someone else was calling it). Empty: every
    call was answered OK.
    """
    ok = ok_replies(before, after)
    if ok > requests:
        return {UNEXPECTED_OK: ok - requests}
    errors: dict[str, int] = {}
    for code in sorted(after):
        count = round(after[code] - before.get(code, 0.0))
        if code != OK_CODE and count > 0:
            errors[code] = min(count, requests - ok - sum(errors.values()))
    missing = requests - ok - sum(errors.values())
    if missing > 0:
        errors[NOT_COUNTED] = missing
    return {code: count for code, count in errors.items() if count > 0}


def settle(counter: CountReader, quiet_s: float = SETTLE_QUIET_S) -> None:
    """Return once the counters stay unchanged for `quiet_s`."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last = counter()
    while True:
        time.sleep(quiet_s)
        now = counter()
        if now == last:
            return
        if time.monotonic() > deadline:
            raise H2loadError(f"the service's counters kept moving for {SETTLE_TIMEOUT_S:g} s")
        last = now


# --- one row -------------------------------------------------------------------------


def run_h2load(command: Sequence[str], timeout_s: float) -> H2loadReport:
    """Run h2load to the end and parse its report."""
    try:
        completed = subprocess.run(
            list(command), capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise H2loadError(f"h2load ran over {timeout_s:.0f} s: {' '.join(command)}") from None
    if completed.returncode != 0:
        raise H2loadError(
            f"h2load failed ({completed.returncode}): {' '.join(command)}\n"
            f"{(completed.stdout + completed.stderr)[-2000:]}"
        )
    return parse_report(completed.stdout)


def planned_requests(rate: float, scenario: H2loadScenario) -> int:
    """Requests for about `duration_s` at `rate`, at least MIN_ROUNDS per call in flight."""
    return max(MIN_ROUNDS * scenario.in_flight, math.ceil(rate * scenario.duration_s))


def cpu_per_request_us(cpu_s: float | None, replies: int) -> float | None:
    """Server CPU per reply in µs (None when not measured or nothing was answered)."""
    if cpu_s is None or replies <= 0:
        return None
    return cpu_s / replies * US_PER_S


Sampler = Callable[[], Mapping[str, float] | None]


def _sample(
    cpu_seconds: Callable[[], float | None], extra: Sampler | None, *, cpu_first: bool
) -> dict[str, float]:
    """CPU and the extra figures; `cpu_first` at the window's end, last at its start, so
    that the service's work for `extra` (a /metrics scrape) stays out of the window."""
    cpu = cpu_seconds() if cpu_first else None
    values = dict(extra() or {}) if extra is not None else {}
    cpu = cpu if cpu_first else cpu_seconds()
    if cpu is not None:
        values["cpu_s"] = cpu
    return values


def measure(
    scenario: H2loadScenario,
    port: int,
    *,
    counter: CountReader,
    cpu_seconds: Callable[[], float | None],
    extra: Sampler | None = None,
    extra_args: Sequence[str] = (),
    host: str = LOOPBACK,
) -> dict[str, Any]:
    """One row (a results document's scenario entry, with h2load's report added).

    `counter`: the service's replies by code (the proof of zero errors); `cpu_seconds`: its
    process tree's CPU; `extra`: more figures sampled at the measured run's start and end,
    their differences returned under "window_deltas". The row's "errors" are by code;
    the caller decides what a non-empty one means (bench.run fails the run).
    """
    executable = require_h2load()
    request = build_request(scenario.api, scenario.images_per_request, scenario.model_name)
    url = f"http://{host}:{port}{request.path}"
    with tempfile.TemporaryDirectory(prefix="bench-h2load-") as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "requests.log"
        body.write_bytes(request.body)
        base = [
            executable, *scenario.load_args(), *extra_args, "-d", str(body), *request.header_args()
        ]  # fmt: skip
        warmup_s = max(scenario.warmup_s, MIN_WARMUP_S)
        warm = run_h2load(
            [*base, "-D", f"{round(warmup_s * 1000)}ms", url], warmup_s + RUN_TIMEOUT_MARGIN_S
        )
        settle(counter)
        requests = planned_requests(warm.requests_per_s, scenario)
        expected_s = requests / max(warm.requests_per_s, 1.0)
        before, start = counter(), _sample(cpu_seconds, extra, cpu_first=False)
        report = run_h2load(
            [*base, "-n", str(requests), "--log-file", str(log), url],
            RUN_TIMEOUT_FACTOR * expected_s + RUN_TIMEOUT_MARGIN_S,
        )
        end, after = _sample(cpu_seconds, extra, cpu_first=True), counter()
        latency = log_latency(parse_log(log.read_text()))
    errors, ok = count_errors(requests, before, after), ok_replies(before, after)
    deltas = {key: end[key] - start[key] for key in start.keys() & end.keys()}
    window_s = report.finished_s
    rate = ok / window_s if window_s > 0 else 0.0
    return {
        "name": scenario.name,
        "target": url,
        "scenario": scenario.to_dict(),
        "window_s": window_s,
        "requests_ok": ok,
        "requests_sent": requests,
        "errors": errors,
        "requests_per_s": rate,
        "images_per_s": rate * scenario.images_per_request,
        "latency_ms": latency.to_dict() if latency else None,
        "max_send_lag_ms": 0.0,
        "server_cpu_us_per_request": cpu_per_request_us(deltas.get("cpu_s"), ok),
        "mean_batch_size": None,
        "window_deltas": deltas,
        "h2load": {**report.to_dict(), "warmup_requests_per_s": warm.requests_per_s},
    }


def describe_row(row: Mapping[str, Any]) -> str:
    """One line: req/s, p50 and p99, server CPU per reply, errors."""
    latency = row["latency_ms"] or {}
    cpu = row["server_cpu_us_per_request"]
    nan = float("nan")
    return (
        f"{row['requests_per_s']:,.0f} req/s, p50 {latency.get('p50_ms', nan):.2f} ms, "
        f"p99 {latency.get('p99_ms', nan):.2f} ms, "
        f"server CPU {nan if cpu is None else cpu:.0f} µs/req, "
        f"errors {sum(row['errors'].values())} of {row['requests_sent']}"
    )


def row_problem(row: Mapping[str, Any]) -> str | None:
    """Why a measured row fails (errors counted, or h2load's own failures); None if fine."""
    errors = row["errors"]
    if errors:
        total = sum(errors.values())
        return (
            f"{total} of {row['requests_sent']} calls not answered OK by the service's own "
            f"counters: {errors}"
        )
    failed = row["h2load"]["requests"]["total"] - row["h2load"]["requests"]["succeeded"]
    if failed:
        return f"h2load saw {failed} failed requests: {row['h2load']['requests']}"
    return None
