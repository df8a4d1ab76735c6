"""Training defaults (Adam lr 1e-3, batch 64, 5 epochs), importable without torch."""

DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_SEED = 0
