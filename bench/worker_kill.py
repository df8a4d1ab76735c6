"""SIGKILL one of two workers under load: calls that succeed meanwhile, how long until the
replacement serves, and what failed.

    python -m bench.worker_kill

A server (`--workers 2 --supervise on`) on the shipped model; four threads send
single-image ModelInfer calls on connections of their own (tests/support/load.py); after
two seconds one worker is killed. Prints the successful calls in the 2 s before and the 4 s
after the kill, the seconds until a replacement is serving (the supervisor's own metrics),
and the calls' codes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from functools import partial

from mnist_serving_training.data import load_mnist_sample
from tests.e2e.workers.test_worker_supervision import replaced, start_workers
from tests.support.load import ModelInferLoad
from tests.support.processes import worker_pids
from tests.support.server_process import REPO_ROOT
from tests.support.waiting import wait_for

BEFORE_S = 2.0
AFTER_S = 4.0
REPLACED_WITHIN_S = 30.0


def main() -> None:
    image = load_mnist_sample().test_images[0]
    with start_workers(REPO_ROOT / "model_repository") as server:
        victim = worker_pids(server)[0]
        load = ModelInferLoad(server.target, image)
        try:
            time.sleep(BEFORE_S)
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            pids = wait_for(partial(replaced, server, victim), REPLACED_WITHIN_S, "the replacement")
            serving_after_s = time.monotonic() - killed
            time.sleep(max(0.0, killed + AFTER_S - time.monotonic()))
            row: dict[str, object] = {
                "ok_in_2s_before_kill": load.succeeded_between(killed - BEFORE_S, killed),
                "ok_in_4s_after_kill": load.succeeded_between(killed, killed + AFTER_S),
                "replacement_serving_after_s": round(serving_after_s, 2),
                "workers_after": len(pids),
            }
        finally:
            load.stop()
        row["codes"] = dict(load.codes)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
