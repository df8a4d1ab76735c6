"""`RepositoryModel`: one entry of the server's model repository (Triton's RepositoryIndex).

The server lists each model version of its repository with a state, as Triton does:
"READY", "UNAVAILABLE" (not loaded, unloaded or failed: `reason` says which), "LOADING" or
"UNLOADING". `Client.models()` returns these records; `Client.load_model()` and
`Client.unload_model()` change them (Triton's RepositoryModelLoad / RepositoryModelUnload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_serving_client import wire_messages
from mnist_serving_client.errors import InvalidInputError

STATE_READY = "READY"


@dataclass(frozen=True)
class RepositoryModel:
    """One model (version) of the server's repository.

    Attributes:
        name: the model's name (its folder in the repository).
        version: the version; "" for a model the server lists without a version (e.g. one
            that is not loaded).
        state: "READY", "UNAVAILABLE", "LOADING" or "UNLOADING" (the server's word, as sent).
        reason: why the model is not ready (e.g. "unloaded" or a load error); "" when ready.
    """

    name: str
    version: str
    state: str
    reason: str = ""

    @property
    def is_ready(self) -> bool:
        """True when the model version answers inference requests."""
        return self.state == STATE_READY

    def to_dict(self) -> dict[str, str]:
        """A JSON-ready dict (the CLI's `models --json` prints a list of them)."""
        return {
            "name": self.name,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
        }


def repository_index_request(ready_only: bool) -> Any:
    return wire_messages.RepositoryIndexRequest(ready=ready_only)


def repository_models_from_response(response: Any) -> list[RepositoryModel]:
    return [
        RepositoryModel(
            name=str(entry.name),
            version=str(entry.version),
            state=str(entry.state),
            reason=str(entry.reason),
        )
        for entry in response.models
    ]


def repository_model_request(model: str) -> Any:
    """The request of RepositoryModelLoad and RepositoryModelUnload (same fields)."""
    if not isinstance(model, str) or not model:
        raise InvalidInputError(f"model must be a non-empty model name, got {model!r}")
    return wire_messages.RepositoryModelRequest(model_name=model)
