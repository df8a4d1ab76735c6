"""Use the asyncio client: health, model metadata, and concurrent single-image calls.

    python client/examples/async_usage.py --target localhost:8001

The concurrent calls travel over one connection; the server batches them together.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from mnist_serving_client import AsyncClient, MnistServingError

DIGITS_DIR = Path(__file__).resolve().parent / "digits"


async def run(target: str) -> None:
    files = sorted(DIGITS_DIR.glob("digit_*.png"))
    async with AsyncClient(target) as client:
        print("health:", (await client.health()).name)
        metadata = await client.model_metadata()
        print(
            f"model: {metadata.name} versions {', '.join(metadata.versions)} ({metadata.platform})"
        )
        predictions = await asyncio.gather(*(client.classify_one(file) for file in files))
    for file, prediction in zip(files, predictions, strict=True):
        print(f"{file.name}: {prediction.label} ({prediction.confidence:.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default=os.environ.get("MNIST_SERVING_TARGET", "localhost:8001")
    )
    args = parser.parse_args()
    try:
        asyncio.run(run(args.target))
    except MnistServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
