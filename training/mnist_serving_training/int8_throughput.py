"""In-process images/s of the FP32 and INT8 models at one batch size, and their accuracy.

``python -m mnist_serving_training.int8_throughput --fp32 DIR/1/model.onnx --int8 DIR/2/model.onnx``

Both models are opened as the server opens them (:func:`create_session`, which disables
the optimizers the INT8 model's metadata names). Measurements alternate between the two
models, and each model's best round counts, so a noisy shared machine biases neither.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnist_serving_training.data import load_mnist_sample
from mnist_serving_training.inference import (
    INPUT_NAME,
    PROBABILITIES_OUTPUT,
    create_session,
    predict_probabilities,
)

DEFAULT_BATCH_SIZE = 64
DEFAULT_ROUNDS = 7
DEFAULT_ROUND_SECONDS = 1.0
WARMUP_RUNS = 20


def images_per_second(session: Any, batch: np.ndarray, seconds: float) -> float:
    """Run ``batch`` repeatedly for about ``seconds``; return images per second."""
    feed = {INPUT_NAME: batch}
    runs = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run([PROBABILITIES_OUTPUT], feed)
        runs += 1
    return runs * len(batch) / elapsed


def measure(
    models: dict[str, Path], batch_size: int, rounds: int, round_seconds: float, threads: int
) -> dict[str, Any]:
    split = load_mnist_sample()
    batch = np.ascontiguousarray(split.test_images[:batch_size, np.newaxis])
    sessions = {name: create_session(path, threads) for name, path in models.items()}
    results: dict[str, Any] = {}
    for name, session in sessions.items():
        for _ in range(WARMUP_RUNS):
            session.run([PROBABILITIES_OUTPUT], {INPUT_NAME: batch})
        predictions = predict_probabilities(session, split.test_images).argmax(axis=1)
        results[name] = {
            "accuracy": float((predictions == split.test_labels).mean()),
            "rounds": [],
        }
    for _ in range(rounds):
        for name, session in sessions.items():
            results[name]["rounds"].append(images_per_second(session, batch, round_seconds))
    for entry in results.values():
        entry["best_images_per_s"] = max(entry["rounds"])
        entry["median_images_per_s"] = float(np.median(entry["rounds"]))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fp32", type=Path, required=True)
    parser.add_argument("--int8", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--round-seconds", type=float, default=DEFAULT_ROUND_SECONDS)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads; 0 = all")
    args = parser.parse_args(argv)
    results = measure(
        {"fp32": args.fp32, "int8": args.int8},
        args.batch_size,
        args.rounds,
        args.round_seconds,
        args.threads,
    )
    fp32, int8 = results["fp32"], results["int8"]
    summary = {
        "batch_size": args.batch_size,
        "threads": args.threads,
        "fp32": fp32,
        "int8": int8,
        "speedup_best": int8["best_images_per_s"] / fp32["best_images_per_s"],
        "speedup_median": int8["median_images_per_s"] / fp32["median_images_per_s"],
        "accuracy_difference_points": 100 * (int8["accuracy"] - fp32["accuracy"]),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
