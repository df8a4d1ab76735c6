"""A py-spy profile of this checkout's server under h2load, summarised (docs/performance.md).

    python -m bench.pyspy_profile [--server-args "..."] [--duration 10] [--output-dir DIR]

Starts the server (as bench/h2load_compare.py does), drives single-image V2 `ModelInfer`
with h2load (4 connections x 16 streams), and records the server with
`py-spy record --native --threads --nolineno -r 200 -f raw` for `--duration` seconds after
a warm-up. Writes the raw (collapsed) stacks and a summary: samples per thread, and the
top functions by self samples (the innermost frame) and by total samples (any frame of a
stack, counted once per stack). py-spy pauses the process for each sample, so the server
runs slower while profiled; the shares, not the rates, are the result.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench import h2load
from bench.h2load_compare import REPO_ROOT, server_process
from bench.scenarios import Api

PY_SPY = "py-spy"
# A sample whose innermost frame is one of these, or that waits on a lock or the GIL, is a
# thread blocked, not running: py-spy's idle detection misses them with --native.
BLOCKING_CALLS = frozenset(
    {"epoll_wait", "epoll_pwait", "poll", "select", "clock_nanosleep", "nanosleep", "accept"}
)
WAITING_FRAMES = frozenset(
    {
        "PyThread_acquire_lock_timed",
        "take_gil",
        "pthread_cond_timedwait",
        "pthread_cond_wait",
        "sem_timedwait",
        "sem_wait",
    }
)
THREAD = re.compile(r"^thread \(\d+\)(?:: (.*))?$")


def record(pid: int, seconds: float, output: Path, rate: int) -> None:
    command = [
        PY_SPY, "record", "--pid", str(pid), "--native", "--threads", "--nolineno",
        "--rate", str(rate), "--duration", str(round(seconds)), "--format", "raw",
        "--output", str(output),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)


def _thread_name(first: str) -> str:
    # py-spy raw, with --threads: "thread (TID): NAME;frame;...;frame COUNT" (NAME: Python's
    # thread name; absent for threads Python did not start, like gRPC's poller).
    match = THREAD.match(first)
    if match is None:
        return first
    return match.group(1) or "(unnamed native thread)"


def _frame_name(frame: str) -> str:
    # "name (module/file.py)" -> "name (file.py)"
    match = re.match(r"^(.*?) \((.*)\)$", frame)
    if not match:
        return frame
    name, where = match.groups()
    return f"{name} ({where.rsplit('/', 1)[-1]})"


def summarise(raw: Path, top: int) -> str:
    threads: collections.Counter[str] = collections.Counter()
    self_samples: collections.Counter[str] = collections.Counter()
    total_samples: collections.Counter[str] = collections.Counter()
    blocked: collections.Counter[str] = collections.Counter()
    all_samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # frames[0]: the thread; then outermost -> innermost.
        thread = _thread_name(frames[0])
        calls = [_frame_name(frame) for frame in frames[1:]] or ["<no frames>"]
        innermost = calls[-1].split(" (")[0]
        if innermost in BLOCKING_CALLS or any(
            call.split(" (")[0] in WAITING_FRAMES for call in calls[-4:]
        ):
            blocked[thread] += count
            continue
        all_samples += count
        threads[thread] += count
        self_samples[calls[-1]] += count
        for name in set(calls):
            total_samples[name] += count

    def share(count: int) -> str:
        return f"{100.0 * count / max(all_samples, 1):5.1f}%"

    lines = [
        f"samples running: {all_samples} (left out, blocked in a wait: {sum(blocked.values())})",
        "",
        "by thread (share of running samples):",
    ]
    lines += [f"  {share(count)}  {name}" for name, count in threads.most_common()]
    lines += ["", f"top {top} by self samples:"]
    lines += [f"  {share(count)}  {name}" for name, count in self_samples.most_common(top)]
    lines += ["", f"top {top} by total samples:"]
    lines += [f"  {share(count)}  {name}" for name, count in total_samples.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-args", default="")
    parser.add_argument("--source", type=Path, default=REPO_ROOT, help="checkout to profile")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--output-dir", type=Path, default=Path("."))
    parser.add_argument("--label", default="profile")
    args = parser.parse_args()
    for tool in ("h2load", PY_SPY):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    raw = args.output_dir / f"{args.label}.raw.txt"
    request = h2load.build_request(Api.GRPC_V2)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        body = workdir / "infer.grpc"
        body.write_bytes(request.body)
        extra = ["--http-port", "0", *args.server_args.split()]
        with server_process("profiled", args.source, extra, workdir, {}) as server:
            load = subprocess.Popen(
                [
                    "h2load", "-c", "4", "-m", "16",
                    "-D", f"{round(args.duration + args.warmup + 5)}s",
                    "-d", str(body), *request.header_args(),
                    f"http://127.0.0.1:{server.grpc_port}{request.path}",
                ],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(args.warmup)
            record(server.pid, args.duration, raw, args.rate)
            load.wait(timeout=60)
    summary = summarise(raw, args.top)
    (args.output_dir / f"{args.label}.summary.txt").write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
