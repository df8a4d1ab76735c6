"""The CPU image run for real: as Kubernetes runs it, classifying, measured, and stopped.

`make test-docker` builds mnist-serving:latest and runs these with MNIST_SERVING_DOCKER_IMAGE
set; elsewhere they skip. The container gets the Deployment's securityContext as docker run
flags (read-only root, tmpfs /tmp, UID 10001, no capabilities) and server.env's settings.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mnist_serving_client import Client, RetryPolicy
from tests.e2e.docker.container import (
    SERVER_ENV_FILE,
    Container,
    docker_image,
    run_container,
)

HOST_LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
HEALTHY_TIMEOUT_S = 90.0
# Callers keep calls in flight until `docker stop` is sent; together they stay far below
# the queue's capacity (server.env MNIST_SERVING_MAX_QUEUE_SIZE), so none is shed.
CALLER_THREADS = 4
IMAGES_PER_CALL = 256
INFLIGHT_WAIT_S = 30.0


def server_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in SERVER_ENV_FILE.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


@pytest.fixture(scope="module")
def container() -> Iterator[Container]:
    with run_container(docker_image()) as running:
        yield running


def test_sdk_classifies_the_sample_digits(
    container: Container, sample_digits: tuple[Any, Any]
) -> None:
    images, labels = sample_digits
    with Client(container.grpc_target, timeout_s=60) as client:
        predictions = client.classify(np.asarray(images, dtype=np.uint8))
    accuracy = float(np.mean([p.label for p in predictions] == np.asarray(labels)))
    target = container.accuracy_target()
    print(f"SDK accuracy on {len(labels)} held-out digits: {accuracy:.2%} (target {target:.0%})")
    assert accuracy >= target


def test_metrics_endpoint_counts_the_calls(container: Container) -> None:
    with Client(container.grpc_target, timeout_s=30) as client:
        client.classify_one(np.zeros((28, 28), dtype=np.uint8))
    text = container.metrics()
    assert "mnist_serving_inflight_requests" in text
    counted = re.findall(r"^mnist_serving_requests_total\{[^}]*\} (\S+)$", text, re.M)
    assert counted, text[:2000]
    assert sum(float(value) for value in counted) >= 1


def test_processes_run_as_the_non_root_user(container: Container) -> None:
    assert container.exec("id", "-u").strip() == "10001"
    statuses = container.exec(
        "sh", "-c", 'for s in /proc/[0-9]*/status; do grep -E "^(Name|Uid):" "$s"; done'
    )
    uids = re.findall(r"^Uid:\s+(\d+)\s+(\d+)", statuses, re.M)
    names = re.findall(r"^Name:\s+(\S+)", statuses, re.M)
    assert "tini" in names
    assert uids
    assert all(real != "0" and effective != "0" for real, effective in uids), statuses


def test_pid_1_is_tini_running_the_server(container: Container) -> None:
    cmdline = container.exec("cat", "/proc/1/cmdline").split("\0")
    assert cmdline[:3] == ["tini", "--", "mnist-serving"]


def test_root_filesystem_is_read_only_and_tmp_is_writable(container: Container) -> None:
    denied = container.exec("sh", "-c", "touch /opt/x 2>&1; echo $?", check=False)
    assert "Read-only file system" in denied
    assert container.exec("sh", "-c", "touch /tmp/x && echo ok").strip() == "ok"


def test_image_holds_nothing_of_the_host_trust_store(container: Container) -> None:
    """pip ran on the host with its CA; the image has Debian's bundle only, no pip config."""
    host_cas = [p.read_text() for p in sorted(HOST_LOCAL_CA_DIR.glob("*.crt"))]
    bundle = container.exec("sh", "-c", f"cat {IMAGE_CA_BUNDLE} 2>/dev/null || true")
    for certificate in host_cas:
        body = "".join(certificate.split("-----")[2].split())
        assert body not in "".join(bundle.split())
    environment = container.exec("env")
    assert "PIP_INDEX_URL" not in environment
    assert "REQUESTS_CA_BUNDLE" not in environment
    assert (
        container.exec("sh", "-c", "ls /etc/pip.conf /wheelhouse 2>&1 || true").count("No such")
        == 2
    )


def test_image_has_no_training_code_and_no_torch(container: Container) -> None:
    probe = (
        "import importlib.util as u; "
        "print(u.find_spec('torch'), u.find_spec('mnist_serving_training'))"
    )
    assert container.exec("python", "-c", probe).strip() == "None None"


def test_docker_healthcheck_turns_healthy(container: Container) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    status = "starting"
    while time.monotonic() < deadline:
        status = container.inspect()["State"]["Health"]["Status"]
        if status != "starting":
            break
        time.sleep(1)
    assert status == "healthy", container.inspect()["State"]["Health"]


def test_docker_stop_drains_in_flight_calls_and_exits_0(sample_digits: tuple[Any, Any]) -> None:
    """SIGTERM via `docker stop`: every call sent before it succeeds; the server exits 0 in time.

    Callers send calls back to back until the stop is sent, so calls are in flight (and more
    start within the drain delay, which the server still accepts) when SIGTERM arrives.
    """
    settings = server_env()
    grace_s = float(settings["MNIST_SERVING_DRAIN_DELAY_S"]) + float(
        settings["MNIST_SERVING_GRACE_PERIOD_S"]
    )
    docker_grace_s = int(grace_s) + 5
    images = np.resize(np.asarray(sample_digits[0], dtype=np.uint8), (IMAGES_PER_CALL, 28, 28))
    results: list[str] = []
    lock = threading.Lock()
    stop_sent = threading.Event()
    with (
        run_container(docker_image()) as container,
        Client(
            container.grpc_target, timeout_s=grace_s, retry=RetryPolicy(max_attempts=1)
        ) as client,
    ):
        client.classify_one(images[0])  # connected before the callers start

        def caller() -> None:
            while not stop_sent.is_set():
                try:
                    outcome = f"ok {len(client.classify(images))}"
                except Exception as error:  # every failure is reported
                    outcome = f"failed {type(error).__name__}: {error}"
                with lock:
                    results.append(outcome)

        threads = [threading.Thread(target=caller) for _ in range(CALLER_THREADS)]
        for thread in threads:
            thread.start()
        inflight = wait_for_inflight_calls(container)
        stop_sent.set()
        exit_code, stop_s = container.stop(docker_grace_s)
        for thread in threads:
            thread.join(timeout=INFLIGHT_WAIT_S)
        logs = container.logs()
    failed = [outcome for outcome in results if outcome != f"ok {IMAGES_PER_CALL}"]
    print(
        f"docker stop took {stop_s:.1f} s (grace {docker_grace_s} s); {inflight:g} calls in "
        f"flight when it was sent; {len(results)} calls, {len(failed)} failed"
    )
    assert not any(thread.is_alive() for thread in threads)
    assert exit_code == 0, logs
    assert stop_s < docker_grace_s, logs
    assert failed == [], logs
    assert len(results) >= CALLER_THREADS


def inflight_gauge(container: Container) -> float:
    pattern = r"^mnist_serving_inflight_requests(?:\{[^}]*\})? (\S+)$"
    return sum(float(value) for value in re.findall(pattern, container.metrics(), re.M))


def wait_for_inflight_calls(container: Container) -> float:
    """Until /metrics shows calls in flight (bounded), so `docker stop` meets real work."""
    deadline = time.monotonic() + INFLIGHT_WAIT_S
    while time.monotonic() < deadline:
        inflight = inflight_gauge(container)
        if inflight > 0:
            return inflight
        time.sleep(0.05)
    raise AssertionError("no call was ever in flight")
