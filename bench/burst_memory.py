"""Does memory a burst took go back? The server group's RSS before, at the peak of and
after bursts of large (but allowed) ModelInfer calls.

    python -m bench.burst_memory [--size-mb 15] [--server-args "--grpc-front native"]

A server (`--workers 2`, `--max-message-bytes` raised to fit the size) gets ROUNDS rounds
of CALLS concurrent V2 calls of SIZE MB each (refused after parsing: their shape does not
match their data). Prints the group's RSS (parent and workers) before, its peak (polled
every 50 ms), and 5 s and 15 s after the last round.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from contextlib import suppress

import grpc
import numpy as np

from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from tests.e2e.robustness.test_hostile_payloads import RssWatch, group_rss
from tests.integration.v2.v2_helpers import raw_infer_request
from tests.support.server_process import REPO_ROOT, start_server_process

CALLS = 6
ROUNDS = 2
MB = 1 << 20
OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=15)
    parser.add_argument("--server-args", default="")
    args = parser.parse_args()
    request = raw_infer_request(np.zeros((1, 28, 28), dtype=np.uint8))
    request.raw_input_contents[0] = bytes(args.size_mb * MB)
    limit = str(max(args.size_mb + 1, 16) * MB)
    extra = ("--workers", "2", "--max-message-bytes", limit, *args.server_args.split())
    with start_server_process(REPO_ROOT / "model_repository", *extra) as server:
        baseline = group_rss(server)
        watch = RssWatch(server)

        def call() -> None:
            # Refused after parsing: the point is the memory it took.
            with (
                grpc.insecure_channel(server.target, options=OPTIONS) as channel,
                suppress(grpc.RpcError),
            ):
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)

        for _ in range(ROUNDS):
            callers = [threading.Thread(target=call) for _ in range(CALLS)]
            for caller in callers:
                caller.start()
            for caller in callers:
                caller.join()
        peak = watch.stop()
        time.sleep(5)
        after_5 = group_rss(server)
        time.sleep(10)
        after_15 = group_rss(server)
    print(
        json.dumps(
            {
                "size_mb": args.size_mb,
                "server_args": args.server_args,
                "baseline_mb": baseline // 1_000_000,
                "peak_mb": peak // 1_000_000,
                "after_5s_mb": after_5 // 1_000_000,
                "after_15s_mb": after_15 // 1_000_000,
            }
        )
    )


if __name__ == "__main__":
    main()
