"""How much of the server's own Python one call runs: files, functions and calls per request.

    python -m bench.call_probe [--calls 300] [--fronts native,grpcio,http]

For each front (the native gRPC front, the grpcio front, HTTP binary V2) a server
(`--workers 1`) is started through this module (`--serve`), which installs a profile
function in every thread (`sys.setprofile` and `threading.setprofile`, before the server
starts) counting `call` events whose code lives in the server package
(server/mnist_serving_server; a coroutine's or generator's resumption is a call event
too). After a warm-up, the probe sends one single-image V2 ModelInfer at a time,
`--calls` of them, with counting on only meanwhile (a control file the server's probe
thread polls), then prints per front: the server files and distinct functions that ran,
and the Python function calls per request (all calls / requests; the server's own
background work over those seconds is included, and is small).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from bench.h2load import v2_binary_body
from bench.loadgen import MODEL_INFER_METHOD, build_pixels, v2_request_bytes
from bench.processes import ServiceProcess, python_module_command

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_DIR = str(REPO_ROOT / "server" / "mnist_serving_server")
CONTROL_ENV = "MNIST_SERVING_CALL_PROBE"
FRONTS = ("native", "grpcio", "http")
WARMUP_CALLS = 50
POLL_S = 0.02


# --- inside the server process ---------------------------------------------------------


def serve(argv: list[str], control: Path) -> int:
    """Run the server with every Python call into the server package counted while
    `control`/on exists; the counts are written to `control`/counts.json when it goes."""
    counts: Counter[tuple[str, str, int]] = Counter()
    counting = [False]

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and counting[0]:
            code = frame.f_code
            if code.co_filename.startswith(SERVER_DIR):
                counts[(code.co_filename, code.co_name, code.co_firstlineno)] += 1

    def watch() -> None:
        on = control / "on"
        while True:
            time.sleep(POLL_S)
            if on.exists() and not counting[0]:
                counts.clear()
                counting[0] = True
            elif counting[0] and not on.exists():
                counting[0] = False
                rows = [[*key, value] for key, value in counts.items()]
                temporary = control / "counts.json.tmp"
                temporary.write_text(json.dumps(rows))
                temporary.replace(control / "counts.json")

    threading.Thread(target=watch, name="call-probe", daemon=True).start()
    sys.setprofile(profile)
    threading.setprofile(profile)
    from mnist_serving_server.__main__ import main

    return main(argv)


# --- the probe --------------------------------------------------------------------------


def grpc_caller(port: int) -> Any:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call: Any = channel.unary_unary(MODEL_INFER_METHOD)
    request = v2_request_bytes(build_pixels(1), "mnist")
    return lambda: call(request, timeout=10)


def http_caller(port: int) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body, header_length = v2_binary_body(build_pixels(1))
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(header_length),
    }

    def call() -> None:
        connection.request("POST", "/v2/models/mnist/infer", body, headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")

    return call


def probe(front: str, calls: int, workdir: Path) -> dict[str, Any]:
    control = workdir / front
    control.mkdir()
    grpc_front = "grpcio" if front == "grpcio" else "native"
    command = python_module_command(
        "bench.call_probe", "--serve", str(control),
        "--model-repository", str(REPO_ROOT / "model_repository"),
        "--host", "127.0.0.1", "--port", "0", "--http-port", "0",
        "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--workers", "1", "--supervise", "off", "--log-level", "WARNING",
        "--grpc-front", grpc_front,
    )  # fmt: skip
    with ServiceProcess(command, log_path=workdir / f"{front}.log") as server:
        port = server.ready["http_port"] if front == "http" else server.ready["grpc_port"]
        call = http_caller(int(port)) if front == "http" else grpc_caller(int(port))
        for _ in range(WARMUP_CALLS):
            call()
        (control / "on").touch()
        time.sleep(4 * POLL_S)
        for _ in range(calls):
            call()
        (control / "on").unlink()
        counts_file = control / "counts.json"
        while not counts_file.exists():
            time.sleep(POLL_S)
        rows = json.loads(counts_file.read_text())
    total = sum(row[3] for row in rows)
    files = Counter[str]()
    for filename, _, _, count in rows:
        files[str(Path(filename).relative_to(SERVER_DIR))] += count
    return {
        "front": front,
        "requests": calls,
        "server_files": len(files),
        "functions": len(rows),
        "calls_per_request": round(total / calls, 1),
        "calls_per_request_by_file": {
            name: round(count / calls, 1) for name, count in files.most_common()
        },
    }


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        return serve(sys.argv[3:], Path(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--fronts", default=",".join(FRONTS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="call-probe-") as tmp:
        for front in args.fronts.split(","):
            result = probe(front, args.calls, Path(tmp))
            print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
