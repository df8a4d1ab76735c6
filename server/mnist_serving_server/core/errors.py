"""The errors the server raises on purpose.

Each carries a message that is safe to show the caller and says what to fix. The gRPC
boundary (`grpc_errors.py`) maps each class to one status code; anything else is a bug
and becomes INTERNAL with a generic message.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class: an expected failure whose message is meant for the caller."""


class InvalidInputError(ServingError):
    """Malformed input: wrong shape, dtype or size, undecodable image, empty request."""


class ModelNotFoundError(ServingError):
    """The request named a model or version this server does not serve (or has unloaded)."""


class FailedPreconditionError(ServingError):
    """Well-formed, but refused in the server's current state: a model that does not fit
    the API called (Classify on a non-classifier), a repository change while the model
    control mode forbids it, or a load whose model files cannot be served."""


class QueueFullError(ServingError):
    """Load shedding: the request does not fit in the bounded queue."""


class NotReadyError(ServingError):
    """Not ready yet, shutting down, or the batch loop has stopped."""


class DeadlineExceededError(ServingError):
    """The request's deadline passed before it was computed."""


class ModelLoadError(Exception):
    """The model could not be found or loaded at start-up (the process exits non-zero)."""
