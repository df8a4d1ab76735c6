"""Stream many images over one bidirectional call and read the predictions as they come.

    python client/examples/streaming.py --target localhost:8001 --count 5000

The images come from a generator: the client reads it only as fast as the server answers
(a bounded window of requests in flight), so memory stays flat however long the stream is.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mnist_serving_client import Client, MnistServingError

DIGITS_DIR = Path(__file__).resolve().parent / "digits"
DEFAULT_COUNT = 2000
IMAGES_PER_REQUEST = 16


def images(files: list[Path], count: int) -> Iterator[bytes]:
    """`count` images, cycling over the example digits (PNG bytes)."""
    contents = [file.read_bytes() for file in files]
    for index in range(count):
        yield contents[index % len(contents)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default=os.environ.get("MNIST_SERVING_TARGET", "localhost:8001")
    )
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT, help="images to stream")
    args = parser.parse_args()

    files = sorted(DIGITS_DIR.glob("digit_*.png"))
    truths = [int(file.stem.removeprefix("digit_")) for file in files]
    correct = 0
    started = time.perf_counter()
    try:
        with Client(args.target) as client:
            stream = client.classify_stream(
                images(files, args.count), images_per_request=IMAGES_PER_REQUEST
            )
            for index, prediction in enumerate(stream):
                correct += prediction.label == truths[index % len(truths)]
    except MnistServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - started
    print(f"{args.count} images in {elapsed:.2f} s ({args.count / elapsed:.0f} images/s)")
    print(f"{correct}/{args.count} correct")
    return 0


if __name__ == "__main__":
    sys.exit(main())
