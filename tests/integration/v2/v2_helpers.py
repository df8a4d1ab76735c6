"""Request builders and readers shared by the KServe V2 integration tests."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from mnist_serving_proto import open_inference_pb2 as pb

MODEL_NAME = "mnist"
INPUT_NAME = "pixels"


def reference_outputs(session: ort.InferenceSession, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the model for uint8 images [n,28,28], one image per ORT call."""
    names = [output.name for output in session.get_outputs()]
    rows = [session.run(names, {INPUT_NAME: image.reshape(1, 1, 28, 28)}) for image in images]
    return {name: np.concatenate([row[i] for row in rows]) for i, name in enumerate(names)}


def as_fp32(images: np.ndarray) -> np.ndarray:
    """torchvision ToTensor's convention: pixel / 255 in float32."""
    return images.astype(np.float32) / np.float32(255)


def raw_infer_request(
    images: np.ndarray, *, datatype: str = "UINT8", request_id: str = ""
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying uint8 `images` ([n,28,28]) as raw_input_contents."""
    request = pb.ModelInferRequest(model_name=MODEL_NAME, id=request_id)
    request.inputs.add(name=INPUT_NAME, datatype=datatype, shape=[len(images), 1, 28, 28])
    data = images if datatype == "UINT8" else as_fp32(images)
    request.raw_input_contents.append(data.tobytes())
    return request


def typed_infer_request(
    images: np.ndarray, *, datatype: str = "UINT8", request_id: str = ""
) -> pb.ModelInferRequest:
    """The same as typed contents (uint_contents / fp32_contents), shape [n,28,28]."""
    request = pb.ModelInferRequest(model_name=MODEL_NAME, id=request_id)
    tensor = request.inputs.add(name=INPUT_NAME, datatype=datatype, shape=[len(images), 28, 28])
    if datatype == "UINT8":
        tensor.contents.uint_contents.extend(images.ravel().tolist())
    else:
        tensor.contents.fp32_contents.extend(as_fp32(images).ravel().tolist())
    return request


def output_array(response: pb.ModelInferResponse, name: str) -> np.ndarray:
    """Output `name` as float32 [n,...], from raw_output_contents or typed contents."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            assert tensor.datatype == "FP32"
            if response.raw_output_contents:
                data = np.frombuffer(response.raw_output_contents[index], dtype="<f4")
            else:
                data = np.array(tensor.contents.fp32_contents, dtype=np.float32)
            return data.reshape(tuple(tensor.shape))
    raise KeyError(f"no output {name!r} in the response")
