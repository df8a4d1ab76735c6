"""``python -m mnist_serving_training``."""

from mnist_serving_training.cli import main

raise SystemExit(main())
