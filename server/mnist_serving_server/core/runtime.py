"""The ONNX Runtime session: provider choice, threads, warm-up and what the model declares.

This is the only module that imports onnxruntime. Input and output names, dtypes and
shapes are read from the model, so the servicers describe whatever the artifact holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import onnxruntime as ort

from mnist_serving_server.core.cores import available_cores
from mnist_serving_server.core.errors import ModelLoadError
from mnist_serving_server.core.ort_names import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    DISABLED_OPTIMIZERS_KEY,
    parse_disabled_optimizers,
)

logger = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "cpu", "cuda")

# metadata_props keys the runtime itself understands (the rest is passed through).
LABELS_KEY = "labels"
ALLOW_SPINNING_KEY = "session.intra_op.allow_spinning"
ALLOW_SPINNING_OFF = "0"

DYNAMIC_DIM = -1
# Warm-up gives a dynamic non-batch dimension this size.
WARM_UP_DYNAMIC_SIZE = 1
# Read the model file in 1 MiB pieces when hashing it, so memory stays flat.
HASH_CHUNK_BYTES = 1 << 20

# ONNX Runtime's element type strings -> (KServe V2 datatype, numpy dtype).
_ORT_TYPES: dict[str, tuple[str, np.dtype[Any]]] = {
    "tensor(bool)": ("BOOL", np.dtype(np.bool_)),
    "tensor(uint8)": ("UINT8", np.dtype(np.uint8)),
    "tensor(uint16)": ("UINT16", np.dtype(np.uint16)),
    "tensor(uint32)": ("UINT32", np.dtype(np.uint32)),
    "tensor(uint64)": ("UINT64", np.dtype(np.uint64)),
    "tensor(int8)": ("INT8", np.dtype(np.int8)),
    "tensor(int16)": ("INT16", np.dtype(np.int16)),
    "tensor(int32)": ("INT32", np.dtype(np.int32)),
    "tensor(int64)": ("INT64", np.dtype(np.int64)),
    "tensor(float16)": ("FP16", np.dtype(np.float16)),
    "tensor(float)": ("FP32", np.dtype(np.float32)),
    "tensor(double)": ("FP64", np.dtype(np.float64)),
}


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the model declares it."""

    name: str
    datatype: str  # KServe V2 name: "UINT8", "FP32", ...
    numpy_dtype: np.dtype[Any]
    shape: tuple[int, ...]  # -1 for dynamic dims, e.g. (-1, 1, 28, 28)


@dataclass(frozen=True)
class ModelInfo:
    """What the served model is: identity, where it runs, and its tensors."""

    name: str
    version: str
    path: Path
    sha256: str  # of model.onnx
    provider: str  # the execution provider actually in use
    intra_op_threads: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    labels: tuple[str, ...]
    """Class names from the "labels" metadata, () when the model has none."""
    metadata: Mapping[str, str]  # all metadata_props


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def available_providers() -> tuple[str, ...]:
    """The execution providers this onnxruntime build offers."""
    return tuple(ort.get_available_providers())


def default_intra_op_threads() -> int:
    """The cores this process may run on (affinity and cgroup quota, unlike os.cpu_count)."""
    return available_cores()


class ModelRuntime:
    """One loaded ONNX model. `run` is blocking: call it from a worker thread."""

    def __init__(self, session: ort.InferenceSession, info: ModelInfo) -> None:
        self._session = session
        self.info = info
        self.input_name = info.inputs[0].name
        self._output_names = [spec.name for spec in info.outputs]

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        name: str,
        version: str,
        provider: str = "auto",
        intra_op_threads: int = 0,
    ) -> ModelRuntime:
        """Load `path` (a model.onnx); raises ModelLoadError saying what is wrong."""
        if provider not in PROVIDER_CHOICES:
            raise ModelLoadError(
                f"unknown execution provider {provider!r}; choose one of {PROVIDER_CHOICES}"
            )
        if intra_op_threads < 0:
            raise ModelLoadError(f"intra_op_threads must be >= 0, got {intra_op_threads}")
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        threads = intra_op_threads or default_intra_op_threads()
        sha256 = file_sha256(path)
        metadata = _read_metadata(path)
        disabled_optimizers = _disabled_optimizers(metadata)
        session = _create_session(path, provider, threads, disabled_optimizers)
        in_use = session.get_providers()[0]
        inputs = tuple(_tensor_spec(arg, path) for arg in session.get_inputs())
        outputs = tuple(_tensor_spec(arg, path) for arg in session.get_outputs())
        if len(inputs) != 1:
            names = [spec.name for spec in inputs]
            raise ModelLoadError(f"{path}: expected exactly one input, the model has {names}")
        if not outputs:
            raise ModelLoadError(f"{path}: the model declares no outputs")
        info = ModelInfo(
            name=name,
            version=version,
            path=path,
            sha256=sha256,
            provider=in_use,
            intra_op_threads=threads,
            inputs=inputs,
            outputs=outputs,
            labels=_labels(metadata, path),
            metadata=MappingProxyType(dict(metadata)),
        )
        logger.info(
            "model loaded: name=%s version=%s path=%s sha256=%s provider=%s threads=%d",
            name,
            version,
            path,
            sha256,
            in_use,
            threads,
        )
        return cls(session, info)

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; the array goes to ONNX Runtime as is (no copy). All outputs by name."""
        results = self._session.run(self._output_names, {self.input_name: pixels})
        return dict(zip(self._output_names, results, strict=True))

    def warm_up(self, max_batch_size: int) -> None:
        """Run batch 1 and `max_batch_size` once, so the first real call pays no set-up cost."""
        spec = self.info.inputs[0]
        item_shape = tuple(
            WARM_UP_DYNAMIC_SIZE if dim == DYNAMIC_DIM else dim for dim in spec.shape[1:]
        )
        for batch_size in sorted({1, max(1, max_batch_size)}):
            self.run(np.zeros((batch_size, *item_shape), dtype=spec.numpy_dtype))


def _read_metadata(path: Path) -> dict[str, str]:
    """metadata_props, read with a session that does no optimisation (cheap, CPU only).

    They must be known before the real session is built: `ort_disabled_optimizers`
    changes how it is built.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors only: this session is thrown away
    try:
        session = ort.InferenceSession(str(path), options, providers=[CPU_PROVIDER])
    except Exception as exc:  # onnxruntime raises several unrelated types for bad files
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
    return dict(session.get_modelmeta().custom_metadata_map)


def _disabled_optimizers(metadata: Mapping[str, str]) -> list[str]:
    return parse_disabled_optimizers(metadata.get(DISABLED_OPTIMIZERS_KEY, ""))


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    # One batch runs at a time (the batcher's single worker thread), so no inter-op pool.
    options.inter_op_num_threads = 1
    # ONNX Runtime's pool threads spin after each run by default; here they would burn the
    # cores that the event loop and gRPC need between batches (measured: server CPU per
    # single-image request 1,031 -> 567 µs; docs/performance.md).
    options.add_session_config_entry(ALLOW_SPINNING_KEY, ALLOW_SPINNING_OFF)
    return options


def _create_session(
    path: Path, provider: str, threads: int, disabled_optimizers: list[str]
) -> ort.InferenceSession:
    available = available_providers()
    if provider == "cuda" and CUDA_PROVIDER not in available:
        raise ModelLoadError(
            f"provider 'cuda' requested but this onnxruntime build has no {CUDA_PROVIDER} "
            f"(available: {', '.join(available)}); install onnxruntime-gpu with a matching "
            "CUDA/cuDNN, or use provider 'cpu' or 'auto'"
        )
    want_cuda = provider == "cuda" or (provider == "auto" and CUDA_PROVIDER in available)
    providers = [CUDA_PROVIDER, CPU_PROVIDER] if want_cuda else [CPU_PROVIDER]
    kwargs: dict[str, Any] = {}
    if disabled_optimizers:
        kwargs["disabled_optimizers"] = disabled_optimizers
    try:
        session = ort.InferenceSession(
            str(path), _session_options(threads), providers=providers, **kwargs
        )
    except Exception as exc:  # onnxruntime raises several unrelated types for bad files
        raise ModelLoadError(f"cannot load ONNX model {path}: {exc}") from exc
    if want_cuda and session.get_providers()[0] != CUDA_PROVIDER:
        # onnxruntime falls back to CPU silently when the CUDA libraries fail to load.
        if provider == "cuda":
            raise ModelLoadError(
                f"provider 'cuda' requested but {CUDA_PROVIDER} failed to initialise for "
                f"{path} (CUDA or cuDNN libraries missing or no GPU visible); see the "
                "onnxruntime warnings above, or use provider 'cpu' or 'auto'"
            )
        logger.warning("%s is available but did not initialise; running on CPU", CUDA_PROVIDER)
    return session


def _tensor_spec(arg: Any, path: Path) -> TensorSpec:
    """A TensorSpec from onnxruntime's NodeArg (type string and symbolic/None dims)."""
    try:
        datatype, numpy_dtype = _ORT_TYPES[arg.type]
    except KeyError:
        raise ModelLoadError(
            f"{path}: tensor {arg.name!r} has unsupported type {arg.type}"
        ) from None
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else DYNAMIC_DIM for dim in arg.shape)
    return TensorSpec(name=arg.name, datatype=datatype, numpy_dtype=numpy_dtype, shape=shape)


def _labels(metadata: Mapping[str, str], path: Path) -> tuple[str, ...]:
    raw = metadata.get(LABELS_KEY)
    if raw is None:
        return ()  # no class names: answers carry class indices only
    try:
        labels = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: metadata 'labels' is not JSON: {exc}") from exc
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ModelLoadError(f"{path}: metadata 'labels' must be a JSON list of strings")
    return tuple(labels)
