"""Run Debian's `prometheus` on loopback with a temporary config and storage, and query it."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for

PROMETHEUS_BINARY = "prometheus"
SCRAPE_INTERVAL = "1s"
READY_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.25
HTTP_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_CHARS = 3000
JOB_NAME = "mnist-serving"


class PrometheusError(RuntimeError):
    """Prometheus did not start, or a query failed; carries its log tail."""


class Prometheus:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def get(self, path: str, **params: str) -> Any:
        """GET an API path; the `data` member of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(self.url + path + query, timeout=HTTP_TIMEOUT_S) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            raise PrometheusError(f"{path} {params}: {error.read().decode()}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        data = self.get("/api/v1/query", query=promql)
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        """The value of a query that yields one series, or None while it yields none."""
        result = self.query(promql)
        if not result:
            return None
        if len(result) != 1:
            raise PrometheusError(f"{promql} gave {len(result)} series, expected one")
        return float(result[0]["value"][1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(folder: Path, metrics_port: int, rule_files: list[Path]) -> Path:
    """A config scraping one local server every second, loading `rule_files`.

    JSON is valid YAML, so no YAML library is needed to write it.
    """
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": JOB_NAME,
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


@contextmanager
def run_prometheus(metrics_port: int, rule_files: list[Path]) -> Iterator[Prometheus]:
    """Start Prometheus on a free loopback port; always stopped on exit."""
    binary = shutil.which(PROMETHEUS_BINARY)
    if binary is None:
        raise FileNotFoundError(PROMETHEUS_BINARY)
    with tempfile.TemporaryDirectory(prefix="prometheus-") as folder_name:
        folder = Path(folder_name)
        config = write_config(folder, metrics_port, rule_files)
        port = free_port()
        log_path = folder / "prometheus.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )
        prometheus = Prometheus(process, port, log_path)
        try:
            wait_for(
                lambda: _ready(prometheus),
                READY_TIMEOUT_S,
                "Prometheus to be ready",
                POLL_INTERVAL_S,
            )
            yield prometheus
        finally:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)


def _ready(prometheus: Prometheus) -> bool | None:
    if prometheus.process.poll() is not None:
        raise PrometheusError(f"prometheus exited early:\n{prometheus.log_tail()}")
    try:
        with urllib.request.urlopen(prometheus.url + "/-/ready", timeout=HTTP_TIMEOUT_S):
            return True
    except (urllib.error.URLError, ConnectionError):
        return None
