"""Registry settings the in-process registry tests share.

Apart from tests/repository_models.py on purpose: the server's registry imports our
protobuf modules, which tritonclient's tests (tests/interop) must not load.
"""

from __future__ import annotations

from mnist_serving_server.core.registry import RegistryOptions

# How long a retired version may take to finish in tests' registries.
RETIRE_TIMEOUT_S = 5.0


def small_registry_options(
    *, default_model: str | None = None, max_batch_size: int = 4
) -> RegistryOptions:
    """Registry settings for tests: small batches, no queue delay, one CPU thread."""
    return RegistryOptions(
        max_batch_size=max_batch_size,
        max_queue_delay_s=0.0,
        max_queue_size=64,
        provider="cpu",
        intra_op_threads=1,
        default_model=default_model,
        retire_timeout_s=RETIRE_TIMEOUT_S,
    )
