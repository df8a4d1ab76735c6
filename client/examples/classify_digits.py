"""Classify the ten real MNIST digits shipped in examples/digits/ (one per class).

    python client/examples/classify_digits.py --target localhost:8001

Each file is named after its true digit, so the output shows whether the server got it right.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mnist_serving_client import Client, MnistServingError

DIGITS_DIR = Path(__file__).resolve().parent / "digits"
TOP_K = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default=os.environ.get("MNIST_SERVING_TARGET", "localhost:8001")
    )
    args = parser.parse_args()

    files = sorted(DIGITS_DIR.glob("digit_*.png"))
    try:
        with Client(args.target) as client:
            predictions = client.classify(files, top_k=TOP_K)
    except MnistServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    correct = 0
    for file, prediction in zip(files, predictions, strict=True):
        truth = int(file.stem.removeprefix("digit_"))
        correct += prediction.label == truth
        print(f"{file.name}: true {truth}, predicted {prediction!r}")
    print(f"{correct}/{len(files)} correct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
