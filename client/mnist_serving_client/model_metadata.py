"""`ModelMetadata`: what the server says about a model (the KServe V2 ModelMetadata RPC)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnist_serving_client import wire_messages

# The server's default model (docs/architecture.md: --model-name defaults to "mnist").
DEFAULT_MODEL_NAME = "mnist"


@dataclass(frozen=True)
class TensorMetadata:
    """One input or output tensor: name, V2 datatype (e.g. "UINT8") and shape (-1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """A served model: its name, versions, runtime platform and tensors."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the CLI prints it)."""
        return {
            "name": self.name,
            "versions": list(self.versions),
            "platform": self.platform,
            "inputs": [_tensor_dict(t) for t in self.inputs],
            "outputs": [_tensor_dict(t) for t in self.outputs],
        }


def model_metadata_request(name: str, version: str) -> Any:
    return wire_messages.ModelMetadataRequest(name=name, version=version)


def model_metadata_from_response(response: Any) -> ModelMetadata:
    return ModelMetadata(
        name=str(response.name),
        versions=tuple(str(v) for v in response.versions),
        platform=str(response.platform),
        inputs=tuple(_tensor(t) for t in response.inputs),
        outputs=tuple(_tensor(t) for t in response.outputs),
    )


def _tensor(message: Any) -> TensorMetadata:
    return TensorMetadata(
        name=str(message.name),
        datatype=str(message.datatype),
        shape=tuple(int(d) for d in message.shape),
    )


def _tensor_dict(tensor: TensorMetadata) -> dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
