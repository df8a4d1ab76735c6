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
   dies on its own is replaced while the others keep serving (gunicorn's and uvicorn's
   supervisors do the same): the replacement loads its models, takes its siblings'
   repository state (`PeerLink.join`) and only then binds the shared ports, so no caller
   meets it warming up. Restarts back off (RESTART_BACKOFF_S, doubling) and are limited:
   a worker that dies more than RESTART_LIMIT times within RESTART_WINDOW_S is a crash
   loop, and the server stops (the others drain) and exits 1 with that reason, for the
   supervisor above (Kubernetes, systemd) to act on. `/metrics` shows
   mnist_serving_worker_restarts_total and mnist_serving_workers{state}. The same parent
   supervises `--workers 1` (unless `--supervise off`, which serves in one process).

Health is per worker: SERVING once warm, NOT_SERVING during shutdown, which the parent
starts for all of them at once. A replacement answers only once warm (it binds then).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
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

from prometheus_client import CollectorRegistry, Counter, Gauge, multiprocess

from mnist_serving_server import event_loop
from mnist_serving_server.app import STOP_SIGNALS, ServerStartError, serve, write_ready_file
from mnist_serving_server.config import HTTP_OFF, METRICS_OFF, ServerConfig
from mnist_serving_server.core.cores import available_cores
from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.runtime import choose_provider
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
# A dead worker is replaced after RESTART_BACKOFF_S, doubled for each earlier death within
# RESTART_WINDOW_S (up to RESTART_BACKOFF_MAX_S); a worker dying more than RESTART_LIMIT
# times within the window is a crash loop that a restart cannot fix: the server stops.
RESTART_BACKOFF_S: Final = 0.5
RESTART_BACKOFF_MAX_S: Final = 8.0
RESTART_WINDOW_S: Final = 60.0
RESTART_LIMIT: Final = 5
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
        if config.ready_file is not None:  # for the parent's one clear line
            with contextlib.suppress(OSError):
                start_error_file(config.ready_file).write_text(str(exc), encoding="utf-8")
        raise SystemExit(WORKER_EXIT_START_FAILED) from None


def start_error_file(ready_file: Path) -> Path:
    """Where a worker that cannot start writes why (next to its ready file)."""
    return ready_file.with_suffix(".error")


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
    config = _provider_decided_once(config)
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


class _Workers:
    """The worker processes by index: started, replaced, counted (metrics), stopped."""

    def __init__(
        self,
        config: ServerConfig,
        workdir: Path,
        port: int,
        http_port: int,
        registry: CollectorRegistry,
    ) -> None:
        self._config = config
        self._workdir = workdir
        self._port = port
        self._http_port = http_port
        self._context = multiprocessing.get_context(START_METHOD)
        self.ready_files = [
            workdir / f"worker-{index}.ready.json" for index in range(config.worker_count)
        ]
        self.processes: list[BaseProcess] = []
        self._deaths: list[list[float]] = [[] for _ in range(config.worker_count)]
        self._restarts = Counter(
            "mnist_serving_worker_restarts_total",
            "Worker processes replaced after they died (--workers N).",
            registry=registry,
        )
        self._states = Gauge(
            "mnist_serving_workers",
            "Worker processes by state: serving (warm), starting, or down (waiting to restart).",
            ["state"],
            registry=registry,
        )

    def start_all(self) -> None:
        self.processes = [self._process(index) for index in range(self._config.worker_count)]
        for worker in self.processes:
            worker.start()

    def _process(self, index: int, *, rejoining: bool = False) -> BaseProcess:
        group = worker_group(self._config, self._workdir, index)
        worker = worker_config(
            self._config,
            port=self._port,
            ready_file=self.ready_files[index],
            http_port=self._http_port,
        )
        return self._context.Process(
            target=_worker_main,
            args=(worker, dataclasses.replace(group, rejoining=rejoining)),
            name=f"mnist-serving-worker-{index}",
        )

    def on_death(self, index: int, now: float) -> float | None:
        """When to replace worker `index`, which just died; None when it is a crash loop."""
        deaths = [t for t in self._deaths[index] if now - t < RESTART_WINDOW_S] + [now]
        self._deaths[index] = deaths
        if len(deaths) > RESTART_LIMIT:
            return None
        backoff = min(RESTART_BACKOFF_S * (1 << (len(deaths) - 1)), RESTART_BACKOFF_MAX_S)
        return now + backoff

    def replace(self, index: int) -> BaseProcess:
        with contextlib.suppress(FileNotFoundError):  # the dead worker's, if it was ready
            self.ready_files[index].unlink()
        worker = self.processes[index] = self._process(index, rejoining=True)
        worker.start()
        self._restarts.inc()
        return worker

    def update_states(self, down: int) -> None:
        alive = [index for index, w in enumerate(self.processes) if w.exitcode is None]
        serving = sum(1 for index in alive if _is_ready(self.ready_files[index]))
        self._states.labels(state="serving").set(serving)
        self._states.labels(state="starting").set(len(alive) - serving)
        self._states.labels(state="down").set(down)


def _provider_decided_once(config: ServerConfig) -> ServerConfig:
    """`--provider auto` that comes to the CPU is decided here, once: its one warning (no
    usable GPU for onnxruntime-gpu) comes from this process, and the workers run `cpu`."""
    if config.provider == "auto" and not choose_provider("auto").cuda:
        return config.with_changes(provider="cpu")
    return config


def _run(
    config: ServerConfig, workdir: Path, port: int, stop: _StopFlag, http_port: int = HTTP_OFF
) -> int:
    metrics_dir = workdir / "metrics"
    metrics_dir.mkdir()
    # Inherited by the spawned workers: their prometheus_client writes per-process files.
    previous_dir = os.environ.get(MULTIPROC_DIR_ENV)
    os.environ[MULTIPROC_DIR_ENV] = str(metrics_dir)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
    workers = _Workers(config, workdir, port, http_port, registry)
    metrics_server: MetricsServer | None = None
    try:
        workers.start_all()
        logger.info(
            "workers starting",
            extra=log_fields(
                workers=config.worker_count,
                grpc_port=port,
                pids=[w.pid for w in workers.processes],
            ),
        )
        metrics_server = _start_metrics(config, registry)
        if not _wait_ready(workers.processes, workers.ready_files, stop):
            return _stop_all(workers.processes, config, stop, EXIT_OK)
        workers.update_states(down=0)
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
        _stop_all(workers.processes, config, stop, EXIT_OK)
        if metrics_server is not None:
            metrics_server.close()
        if config.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                config.ready_file.unlink()
        if previous_dir is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = previous_dir


def _start_metrics(config: ServerConfig, registry: CollectorRegistry) -> MetricsServer | None:
    if config.metrics_port == METRICS_OFF:
        return None
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
        for worker, ready_file in zip(workers, ready_files, strict=True):
            if worker.exitcode is not None:
                with contextlib.suppress(OSError):  # the worker's own reason, when it wrote one
                    raise WorkersStartError(
                        start_error_file(ready_file).read_text(encoding="utf-8")
                    ) from None
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


def _supervise(workers: _Workers, config: ServerConfig, stop: _StopFlag, metrics_dir: Path) -> int:
    """Until a stop signal (-> stop all, 0), replacing every worker that dies; a crash loop
    (more than RESTART_LIMIT deaths of one worker within RESTART_WINDOW_S) stops all, 1."""
    due: dict[int, float] = {}  # dead worker index -> when to start its replacement
    while not stop.event.is_set():
        now = time.monotonic()
        for index in [index for index, at in due.items() if at <= now]:
            del due[index]
            worker = workers.replace(index)
            logger.warning("worker replaced", extra=log_fields(worker=worker.name, pid=worker.pid))
        workers.update_states(down=len(due))
        live = {w.sentinel: i for i, w in enumerate(workers.processes) if i not in due}
        wait_s = min([SUPERVISE_POLL_S, *(at - now for at in due.values())])
        ended = wait_for_sentinels(list(live), timeout=max(wait_s, 0.0))
        for sentinel in ended:
            index = live[sentinel]  # type: ignore[index]
            worker = workers.processes[index]
            # A sentinel is ready as the process closes its descriptors, a moment before
            # its exit status exists: join to read it.
            worker.join(KILL_WAIT_S)
            _mark_dead(worker, metrics_dir)
            fields = log_fields(worker=worker.name, pid=worker.pid, code=worker.exitcode)
            if config.supervise == "off":
                logger.error("worker died; stopping the server (--supervise off)", extra=fields)
                return _stop_all(workers.processes, config, stop, EXIT_WORKER_FAILED)
            restart_at = workers.on_death(index, time.monotonic())
            if restart_at is None:
                logger.error(
                    f"worker died {RESTART_LIMIT + 1} times within {RESTART_WINDOW_S:.0f} s "
                    "(a crash loop; its error is in the log above): stopping the server",
                    extra=fields,
                )
                return _stop_all(workers.processes, config, stop, EXIT_WORKER_FAILED)
            logger.error("worker died; replacing it while the others serve", extra=fields)
            due[index] = restart_at
    logger.info("stop signal received; stopping workers", extra=log_fields(signal=stop.signum))
    return _stop_all(workers.processes, config, stop, EXIT_OK)


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
