"""`--workers N|auto`: N server processes sharing the ports, one repository state, one
`/metrics`, one lifecycle. `auto` (the default) = the cores this process may use.

One Python process serves gRPC from one event loop, so it cannot use a second core for
the per-request work (protobuf, grpc.aio's own code, the servicers) that bounds this
server. With `--workers N` the parent:

1. reserves the gRPC port: binds a SO_REUSEPORT socket (so `--port 0` picks a free port)
   and keeps it bound, not listening, until the end, so no unrelated process can take it;
2. creates a private folder for prometheus_client's multiprocess mode and starts N worker
   processes (multiprocessing "spawn": fresh interpreters, which read
   PROMETHEUS_MULTIPROC_DIR when they import prometheus_client). Each worker is a whole
   server (`app.serve`) with its own batcher and ONNX Runtime session, `intra_op_threads`
   = cores / N unless set, binding the same gRPC and HTTP ports with SO_REUSEPORT; the
   kernel spreads new connections over the workers. Each worker listens on a Unix socket
   in the private folder for its siblings (peers.py): a repository load or unload that
   any worker receives, and the leader's polling, is applied in every worker before the
   call returns, and the repository index and statistics add up every worker's;
3. serves `/metrics` itself from every worker's files (MultiProcessCollector): counters and
   histograms add up, queue depth and in-flight gauges sum over the live workers, the
   model info gauge is one series;
4. writes the ready file (with the shared port and its own pid) once every worker is warm;
5. supervises. SIGTERM/SIGINT: forwarded to every worker (each drains as a single server
   does: NOT_SERVING, drain delay, grace period), waited for, then exit 0. A worker that
   dies on its own: fail fast. The others get SIGTERM (so they answer NOT_SERVING at once
   and drain) and the parent exits 1, for the supervisor (Kubernetes, systemd) to restart
   the whole server. Half a server that reports SERVING on some connections and refuses
   others would be harder to reason about than a restart.

Health is per worker, but every worker reports the same status: SERVING once warm,
NOT_SERVING during shutdown, which the parent starts for all of them at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import threading
import time
from multiprocessing.connection import wait as wait_for_sentinels
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Final

from prometheus_client import CollectorRegistry, multiprocess

from mnist_serving_server import event_loop
from mnist_serving_server.app import STOP_SIGNALS, ServerStartError, serve, write_ready_file
from mnist_serving_server.config import HTTP_OFF, METRICS_OFF, ServerConfig
from mnist_serving_server.core.cores import available_cores
from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.grpc_api.auth import AuthConfigError, load_tokens
from mnist_serving_server.logs import configure_logging, log_fields
from mnist_serving_server.metrics import MetricsServer, start_metrics_server
from mnist_serving_server.peers import WorkerGroup

logger = logging.getLogger(__name__)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
START_METHOD: Final = "spawn"  # fresh interpreters: no forked gRPC or ONNX Runtime threads
# How often the parent looks at the workers' ready files while they start.
READY_POLL_S = 0.05
# Supervision wakes at least this often to notice a stop signal.
SUPERVISE_POLL_S = 0.2
# On top of drain delay + grace period: loading, the batcher's stop, interpreter exit.
STOP_MARGIN_S = 15.0
KILL_WAIT_S = 5.0
WORKER_EXIT_START_FAILED = 1
# A peer call's time limit: this many model loads, the grace period, and this margin.
PEER_LOADS_PER_CALL = 2
PEER_CALL_MARGIN_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_OK = 0
EXIT_WORKER_FAILED = 1


class WorkersStartError(Exception):
    """A worker could not start (its own error is in the log above); the message says which."""


def reserve_port(host: str, port: int, what: str = "gRPC") -> socket.socket:
    """A bound, not listening, SO_REUSEPORT socket on host:port (port 0 = a free port).

    Raises ServerStartError when the port is taken by a socket without SO_REUSEPORT.
    """
    wildcard = host in ("", "0.0.0.0", "::")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            None if wildcard else host.strip("[]"),
            port,
            socket.AF_INET if host == "0.0.0.0" else socket.AF_UNSPEC,
            socket.SOCK_STREAM,
            0,
            socket.AI_PASSIVE,
        )[0]
    except socket.gaierror as exc:
        raise ServerStartError(f"cannot resolve the {what} host {host!r}: {exc}") from None
    reserved = socket.socket(family, kind, proto)
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(address)
    except OSError as exc:
        reserved.close()
        raise ServerStartError(
            f"cannot reserve the {what} port {host}:{port} for the workers: {exc}"
        ) from None
    return reserved


def worker_config(
    config: ServerConfig, *, port: int, ready_file: Path, http_port: int = HTTP_OFF
) -> ServerConfig:
    """One worker's settings: the shared port, no /metrics of its own, its share of cores."""
    threads = config.intra_op_threads or max(1, available_cores() // config.worker_count)
    return config.with_changes(
        workers=1,
        port=port,
        http_port=http_port,
        metrics_port=METRICS_OFF,
        ready_file=ready_file,
        intra_op_threads=threads,
    )


def worker_group(config: ServerConfig, workdir: Path, index: int) -> WorkerGroup:
    """Worker `index`'s place in the group: every worker's peer socket in `workdir`."""
    sockets = tuple(workdir / f"worker-{peer}.sock" for peer in range(config.worker_count))
    # A peer call may include the peer's model load (each version within the load
    # timeout) and an unload's retirement (within the grace period).
    timeout_s = (
        config.model_load_timeout_s * PEER_LOADS_PER_CALL
        + config.grace_period_s
        + PEER_CALL_MARGIN_S
    )
    return WorkerGroup(index=index, sockets=sockets, call_timeout_s=timeout_s)


def _worker_main(config: ServerConfig, group: WorkerGroup) -> None:
    """A worker process's body (module level: "spawn" pickles a reference to it)."""
    configure_logging(config.log_format, config.log_level)
    _stop_with_parent()
    try:
        event_loop.run(serve(config, reuse_port=True, group=group))
    except (ModelLoadError, ServerStartError) as exc:
        logger.error("worker could not start: %s", exc)
        raise SystemExit(WORKER_EXIT_START_FAILED) from None


def _stop_with_parent() -> None:
    """SIGTERM this worker when the parent dies, even by SIGKILL (Linux PR_SET_PDEATHSIG),
    so that no worker keeps serving a port whose server is gone; it then drains as usual."""
    parent = multiprocessing.parent_process()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        logger.warning("cannot tie this worker to its parent: errno %d", ctypes.get_errno())
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl
        os.kill(os.getpid(), signal.SIGTERM)


class _StopFlag:
    """Set by SIGTERM/SIGINT in the parent; the supervision loop polls it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        self.event.set()


def run_workers(config: ServerConfig) -> int:
    """Serve with `config.worker_count` processes until SIGTERM/SIGINT; returns the exit code.

    Raises ServerStartError when the port cannot be reserved or /metrics cannot be served,
    WorkersStartError when a worker fails before it is ready.
    """
    try:
        # Fail once, here, rather than in every worker after it has loaded the model.
        load_tokens(config.auth_token_file, os.environ)
    except AuthConfigError as exc:
        raise ServerStartError(str(exc)) from None
    stop = _StopFlag()
    previous = {signum: signal.signal(signum, stop.handler) for signum in STOP_SIGNALS}
    try:
        with contextlib.ExitStack() as stack:
            workdir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="mnist-serving-workers-")
            )
            reserved = stack.enter_context(
                contextlib.closing(reserve_port(config.host, config.port))
            )
            http_port = HTTP_OFF
            if config.http_port != HTTP_OFF:
                reserved_http = stack.enter_context(
                    contextlib.closing(reserve_port(config.http_host, config.http_port, "HTTP"))
                )
                http_port = int(reserved_http.getsockname()[1])
            return _run(config, Path(workdir), int(reserved.getsockname()[1]), stop, http_port)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run(
    config: ServerConfig, workdir: Path, port: int, stop: _StopFlag, http_port: int = HTTP_OFF
) -> int:
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    # Inherited by the spawned workers: their prometheus_client writes per-process files.
    previous_dir = os.environ.get(MULTIPROC_DIR_ENV)
    os.environ[MULTIPROC_DIR_ENV] = str(metrics_dir)
    context = multiprocessing.get_context(START_METHOD)
    ready_files = [workdir / f"worker-{index}.ready.json" for index in range(config.worker_count)]
    workers: list[BaseProcess] = [
        context.Process(
            target=_worker_main,
            args=(
                worker_config(config, port=port, ready_file=ready_file, http_port=http_port),
                worker_group(config, workdir, index),
            ),
            name=f"mnist-serving-worker-{index}",
        )
        for index, ready_file in enumerate(ready_files)
    ]
    metrics_server: MetricsServer | None = None
    try:
        for worker in workers:
            worker.start()
        logger.info(
            "workers starting",
            extra=log_fields(
                workers=config.worker_count, grpc_port=port, pids=[w.pid for w in workers]
            ),
        )
        metrics_server = _start_metrics(config, metrics_dir)
        if not _wait_ready(workers, ready_files, stop):
            return _stop_all(workers, config, stop, EXIT_OK)
        metrics_port = None if metrics_server is None else metrics_server.port
        if config.ready_file is not None:
            write_ready_file(
                config.ready_file, port, metrics_port, None if http_port == HTTP_OFF else http_port
            )
        logger.info(
            "ready",
            extra=log_fields(
                workers=config.worker_count, grpc_port=port, metrics_port=metrics_port
            ),
        )
        return _supervise(workers, config, stop, metrics_dir)
    finally:
        _stop_all(workers, config, stop, EXIT_OK)
        if metrics_server is not None:
            metrics_server.close()
        if config.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                config.ready_file.unlink()
        if previous_dir is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = previous_dir


def _start_metrics(config: ServerConfig, metrics_dir: Path) -> MetricsServer | None:
    if config.metrics_port == METRICS_OFF:
        return None
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    try:
        server = start_metrics_server(registry, config.metrics_host, config.metrics_port)
    except OSError as exc:
        raise ServerStartError(
            f"cannot serve /metrics on {config.metrics_host}:{config.metrics_port}: {exc}"
        ) from None
    return server


def _wait_ready(workers: list[BaseProcess], ready_files: list[Path], stop: _StopFlag) -> bool:
    """True once every worker wrote its ready file; False on a stop signal first.

    Raises WorkersStartError when a worker exits before it is ready.
    """
    while not all(_is_ready(path) for path in ready_files):
        for worker in workers:
            if worker.exitcode is not None:
                raise WorkersStartError(
                    f"worker {worker.name} (pid {worker.pid}) exited with {worker.exitcode} "
                    "before it was ready; its error is in the log above"
                )
        if stop.event.wait(READY_POLL_S):
            return False
    return True


def _is_ready(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("grpc_port"))
    except (OSError, ValueError):
        return False


def _supervise(
    workers: list[BaseProcess], config: ServerConfig, stop: _StopFlag, metrics_dir: Path
) -> int:
    """Until a stop signal (-> stop all, 0) or a worker's death (-> stop the rest, 1)."""
    sentinels = [worker.sentinel for worker in workers]
    while not stop.event.is_set():
        ended = wait_for_sentinels(sentinels, timeout=SUPERVISE_POLL_S)
        if ended:
            # A sentinel is ready as the process closes its descriptors, a moment before
            # its exit status exists: join to read it.
            dead = [worker for worker in workers if worker.sentinel in ended]
            for worker in dead:
                worker.join(KILL_WAIT_S)
                logger.error(
                    "worker died; stopping all workers (NOT_SERVING) so the server restarts",
                    extra=log_fields(worker=worker.name, pid=worker.pid, code=worker.exitcode),
                )
                _mark_dead(worker, metrics_dir)
            return _stop_all(workers, config, stop, EXIT_WORKER_FAILED)
    logger.info("stop signal received; stopping workers", extra=log_fields(signal=stop.signum))
    return _stop_all(workers, config, stop, EXIT_OK)


def _stop_all(workers: list[BaseProcess], config: ServerConfig, stop: _StopFlag, code: int) -> int:
    """SIGTERM every live worker, wait for them (killing any that hang); returns `code`.

    A worker that ends with an error during a requested stop makes the exit code 1.
    """
    for worker in workers:
        if worker.pid is not None and worker.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + config.drain_delay_s + config.grace_period_s + STOP_MARGIN_S
    for worker in workers:
        if worker.pid is None:
            continue  # never started
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.exitcode is None:
            logger.error(
                "worker did not stop in time; killing it", extra=log_fields(pid=worker.pid)
            )
            worker.kill()
            worker.join(KILL_WAIT_S)
            code = EXIT_WORKER_FAILED
        elif worker.exitcode != 0 and code == EXIT_OK and stop.event.is_set():
            code = EXIT_WORKER_FAILED
    return code


def _mark_dead(worker: BaseProcess, metrics_dir: Path) -> None:
    """Drop a dead worker's live gauges (its counters and histograms stay counted)."""
    if worker.pid is not None:
        multiprocess.mark_process_dead(worker.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
