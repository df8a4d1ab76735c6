"""`python -m mnist_serving_server` / `mnist-serving`: serve until SIGTERM or SIGINT.

Exit codes: 0 after a graceful stop, 1 when the model cannot be loaded or the server cannot
start (one clear line on stderr, no traceback) or when a worker keeps dying (a crash loop),
2 for a bad option.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from mnist_serving_server import event_loop
from mnist_serving_server.app import ServerStartError, serve
from mnist_serving_server.config import PROG, ConfigError, load_config
from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.logs import configure_logging
from mnist_serving_server.workers import WorkersStartError, run_workers

EXIT_OK = 0
EXIT_START_FAILED = 1
EXIT_BAD_CONFIG = 2

logger = logging.getLogger("mnist_serving_server")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    configure_logging(config.log_format, config.log_level)
    try:
        if config.worker_count > 1 or config.supervise == "on":
            return run_workers(config)
        event_loop.run(serve(config))
    except (ModelLoadError, ServerStartError, WorkersStartError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_START_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
