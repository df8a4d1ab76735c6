"""`python -m mnist_serving_client`: the `mnist-client` CLI."""

import sys

from mnist_serving_client.cli import main

sys.exit(main())
