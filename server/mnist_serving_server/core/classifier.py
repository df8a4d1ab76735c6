"""The Classify API's contract: which models it can feed, and how.

Classify (grpc_api/classifier_servicer.py) takes images and returns class probabilities,
so it serves only image classifiers: one UINT8 image input [N,H,W] or [N,1,H,W] of a fixed
size, and a `probabilities` output [N, classes]. Every other model is served through the
KServe V2 API alone. The registry computes each version's contract once, at load
(`ServedVersion.classifier`), so a request pays nothing for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mnist_serving_server.core.runtime import DYNAMIC_DIM, ModelInfo

PROBABILITIES_OUTPUT: Final = "probabilities"
"""The output an image classifier must have for the Classify API."""
CLASSIFIER_INPUT_DATATYPE: Final = "UINT8"


@dataclass(frozen=True)
class ClassifierContract:
    """How the Classify API feeds an image classifier."""

    image_shape: tuple[int, ...]
    """One image as the model takes it, e.g. (1, 28, 28) or (28, 28)."""
    num_classes: int


def classifier_contract(info: ModelInfo) -> tuple[ClassifierContract | None, str]:
    """How Classify feeds this model, or None and why it cannot."""
    spec = info.inputs[0]
    image_shape = spec.shape[1:]
    outputs = {output.name: output for output in info.outputs}
    probabilities = outputs.get(PROBABILITIES_OUTPUT)
    if spec.datatype != CLASSIFIER_INPUT_DATATYPE or len(image_shape) not in (2, 3):
        return None, (
            f"model {info.name!r} is not an image classifier for the Classify API: its input "
            f"{spec.name!r} is {spec.datatype} {list(spec.shape)}, expected one UINT8 image "
            "input [N,H,W] or [N,1,H,W]; use the KServe V2 API (ModelInfer) for it"
        )
    if DYNAMIC_DIM in image_shape or (len(image_shape) == 3 and image_shape[0] != 1):
        return None, (
            f"model {info.name!r}: the Classify API needs a fixed single-channel image size, "
            f"the input is {list(spec.shape)}; use the KServe V2 API (ModelInfer) for it"
        )
    if probabilities is None or len(probabilities.shape) != 2 or probabilities.shape[1] < 1:
        return None, (
            f"model {info.name!r} has no {PROBABILITIES_OUTPUT!r} output [N, classes], which "
            "the Classify API returns; use the KServe V2 API (ModelInfer) for it"
        )
    return ClassifierContract(image_shape=image_shape, num_classes=probabilities.shape[1]), ""
