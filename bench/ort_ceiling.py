"""The model ceiling: in-process ONNX Runtime images/s at a few batch sizes.

No RPC, no batcher: one session (all cores, as the server configures it) calling
`run` back to back on a preallocated batch. Each batch size runs for a few seconds in
short slices and the best slice counts, so a noisy neighbour costs a slice, not the result.

`python -m bench.ort_ceiling --model model_repository/mnist/1/model.onnx --json out.json`
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mnist_serving_server.core.cores import available_cores
from mnist_serving_server.core.ort_names import (
    CPU_PROVIDER,
    DISABLED_OPTIMIZERS_KEY,
    parse_disabled_optimizers,
)

DEFAULT_BATCH_SIZES = (1, 16, 32, 64)
DEFAULT_SECONDS_PER_BATCH_SIZE = 3.0
SLICE_S = 0.25
WARMUP_RUNS = 5
IMAGE_SHAPE = (1, 28, 28)
PIXEL_SEED = 11
MAX_PIXEL = 256
# The metadata key the INT8 export sets on quantized models.
QUANTIZATION_KEY = "quantization"


def load_session(model: Path, intra_op_threads: int = 0) -> ort.InferenceSession:
    """A CPU session configured as the server configures its own."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads or available_cores()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    probe = ort.InferenceSession(str(model), providers=[CPU_PROVIDER])
    # The INT8 export names optimizers that slow it down; read as the server reads them.
    disabled = probe.get_modelmeta().custom_metadata_map.get(DISABLED_OPTIMIZERS_KEY, "")
    names = parse_disabled_optimizers(disabled)
    return ort.InferenceSession(
        str(model),
        sess_options=options,
        providers=[CPU_PROVIDER],
        disabled_optimizers=names or None,
    )


def images_per_second(
    session: ort.InferenceSession, batch_size: int, seconds: float, slice_s: float = SLICE_S
) -> float:
    """Best images/s over slices of `slice_s` within `seconds` at one batch size."""
    input_name = session.get_inputs()[0].name
    rng = np.random.default_rng(PIXEL_SEED)
    pixels = rng.integers(0, MAX_PIXEL, size=(batch_size, *IMAGE_SHAPE), dtype=np.uint8)
    feed = {input_name: pixels}
    for _ in range(WARMUP_RUNS):
        session.run(None, feed)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        runs = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < slice_s:
            session.run(None, feed)
            runs += 1
        best = max(best, runs * batch_size / elapsed)
    return best


def measure(
    model: Path,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    seconds: float = DEFAULT_SECONDS_PER_BATCH_SIZE,
    intra_op_threads: int = 0,
) -> dict[str, Any]:
    session = load_session(model, intra_op_threads)
    metadata = session.get_modelmeta().custom_metadata_map
    return {
        "model": str(model),
        "quantized": QUANTIZATION_KEY in metadata,
        "onnxruntime": ort.__version__,
        "intra_op_threads": intra_op_threads or available_cores(),
        "seconds_per_batch_size": seconds,
        "images_per_s": {
            str(batch): images_per_second(session, batch, seconds) for batch in batch_sizes
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ort_ceiling", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="path to model.onnx")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument(
        "--seconds",
        type=float,
        default=DEFAULT_SECONDS_PER_BATCH_SIZE,
        help="seconds per batch size (best slice counts)",
    )
    parser.add_argument("--intra-op-threads", type=int, default=0, help="0 = all usable cores")
    parser.add_argument("--json", type=Path, help="write the result here as well")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"error: no model at {args.model}", file=sys.stderr)
        return 1
    result = measure(args.model, args.batch_sizes, args.seconds, args.intra_op_threads)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
