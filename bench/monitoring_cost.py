"""What model monitoring costs per ONNX Runtime batch, in process: `python -m
bench.monitoring_cost`.

The shipped model's real outputs for batches of 1, 4, 16 and 64 held-out digits go through
the server's own BatchTap (core/shadow.py: gather, then VersionMonitor and the metrics'
observer: counters, histogram, PSI window) on an event loop, as the batcher calls it; the
ONNX Runtime run of the same batch (one thread) is printed beside it for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from mnist_serving_server.core.monitoring import PROFILE_FILE_NAME, VersionMonitor, read_profile
from mnist_serving_server.core.runtime import ModelRuntime
from mnist_serving_server.core.shadow import BatchTap
from mnist_serving_server.metrics import ServerMetrics
from mnist_serving_training.data import load_mnist_sample

BATCH_SIZES = (1, 4, 16, 64)
IMAGES_PER_SIZE = 20_000
WARM_UP_BATCHES = 200
ORT_BATCHES = 200
MICROSECONDS = 1e6


async def measure(version_dir: Path) -> None:
    runtime = ModelRuntime.load(
        version_dir / "model.onnx", name="mnist", version="1", provider="cpu", intra_op_threads=1
    )
    profile = read_profile(version_dir / PROFILE_FILE_NAME)
    observer = ServerMetrics(CollectorRegistry()).version_observer(runtime.info)
    images = load_mnist_sample().test_images[:, None]
    for size in BATCH_SIZES:
        pixels = images[:size]
        outputs = runtime.run(pixels)
        tap = BatchTap(VersionMonitor(len(runtime.info.labels), observer, profile), observer)
        for _ in range(WARM_UP_BATCHES):
            tap(pixels, outputs)
        batches = IMAGES_PER_SIZE // size + WARM_UP_BATCHES
        started = time.perf_counter()
        for _ in range(batches):
            tap(pixels, outputs)
        tap.flush()
        monitoring_us = (time.perf_counter() - started) / batches * MICROSECONDS
        started = time.perf_counter()
        for _ in range(ORT_BATCHES):
            runtime.run(pixels)
        ort_us = (time.perf_counter() - started) / ORT_BATCHES * MICROSECONDS
        print(
            f"batch {size:3d}: monitoring {monitoring_us:6.1f} us/batch "
            f"({monitoring_us / size:5.2f} us/image); ONNX Runtime {ort_us:8.1f} us/batch"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version-dir", type=Path, default=Path("model_repository/mnist/1"))
    asyncio.run(measure(parser.parse_args().version_dir))


if __name__ == "__main__":
    main()
