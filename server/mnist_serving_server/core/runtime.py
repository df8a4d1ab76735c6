"""The ONNX Runtime session: provider choice, threads, warm-up and what the model declares.

This is the only module that imports onnxruntime. Input and output names, dtypes and
shapes are read from the model, so the servicers describe whatever the artifact holds.

Provider: `cpu`, `cuda` or `auto` (CUDA where this onnxruntime build has it AND the NVIDIA
driver sees a GPU, else the CPU with one warning per process when the build is
onnxruntime-gpu). `cuda` without a usable GPU refuses to load, saying what to do.

On CUDA, every batch is padded to one of a few fixed sizes (powers of two up to the model's
max batch size, and that size: `batch_buckets`), each run once at load (`warm_up`): ONNX
Runtime's CUDA provider tunes cuDNN per input shape (an exhaustive search by default), so a
dynamic batcher would otherwise stall the first batch of every new size.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
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
# The NVIDIA driver's library: it answers whether a GPU is usable here (Linux).
CUDA_DRIVER_LIBRARY = "libcuda.so.1"
CUDA_SUCCESS = 0
WHAT_TO_DO_WITHOUT_GPU = (
    "run on a machine with an NVIDIA GPU and its driver, or start with --provider auto "
    "(falls back to the CPU) or --provider cpu; `make serve ORT=cpu` installs the CPU build"
)

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
    provider_options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """The options of the provider in use as ONNX Runtime reports them ({} on the CPU)."""


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


def cuda_device_problem() -> str | None:
    """Why no CUDA device can be used here, asked of the NVIDIA driver; None when one can.

    onnxruntime-gpu lists CUDAExecutionProvider whether or not a GPU exists, then fails
    (or silently falls back to the CPU) at session creation. Off Linux: None (ONNX Runtime
    decides).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        driver = ctypes.CDLL(CUDA_DRIVER_LIBRARY)
    except OSError as exc:
        return f"no NVIDIA driver ({exc})"
    status = driver.cuInit(0)
    if status != CUDA_SUCCESS:
        return f"the NVIDIA driver found no usable GPU (cuInit error {status})"
    count = ctypes.c_int(0)
    status = driver.cuDeviceGetCount(ctypes.byref(count))
    if status != CUDA_SUCCESS or count.value < 1:
        return "the NVIDIA driver sees no GPU"
    return None


@dataclass(frozen=True)
class ProviderChoice:
    """Which provider the sessions of this process ask for, and why not CUDA."""

    cuda: bool
    problem: str | None = None
    """Why CUDA is not used although this build has it (None: no such build, or CUDA)."""


_choice_lock = threading.Lock()
_choices: dict[str, ProviderChoice] = {}


def choose_provider(requested: str) -> ProviderChoice:
    """CUDA or the CPU for `requested` (auto, cpu, cuda), decided once per process.

    auto with onnxruntime-gpu but no usable GPU logs one warning (not one per model);
    cuda without CUDA raises ModelLoadError saying what to do.
    """
    with _choice_lock:
        if requested not in _choices:
            _choices[requested] = _choose_provider(requested)
        choice = _choices[requested]
    if requested == "cuda" and not choice.cuda:
        raise ModelLoadError(
            f"provider 'cuda' requested but {choice.problem}; {WHAT_TO_DO_WITHOUT_GPU}"
        )
    return choice


def _choose_provider(requested: str) -> ProviderChoice:
    if requested == "cpu":
        return ProviderChoice(cuda=False)
    available = available_providers()
    if CUDA_PROVIDER not in available:
        problem = (
            f"this onnxruntime build has no {CUDA_PROVIDER} (available: {', '.join(available)}); "
            "install onnxruntime-gpu (`make serve ORT=gpu`: requirements/serve-gpu.txt)"
        )
        return ProviderChoice(cuda=False, problem=problem)
    device_problem = cuda_device_problem()
    if device_problem is not None:
        problem = f"onnxruntime-gpu is installed but {device_problem}"
        if requested == "auto":
            logger.warning(
                "%s; serving on %s (--provider cpu, or `make serve ORT=cpu`, installs and "
                "runs the CPU build without this warning)",
                problem,
                CPU_PROVIDER,
            )
        return ProviderChoice(cuda=False, problem=problem)
    _preload_cuda_libraries()
    return ProviderChoice(cuda=True)


def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from NVIDIA's wheels (requirements/serve-gpu.txt installs them
    as onnxruntime-gpu's `cuda` and `cudnn` extras) before the first CUDA session."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # the system's libraries may still do: ONNX Runtime tries them
        logger.warning("onnxruntime.preload_dlls() failed (%s); trying the system's CUDA", exc)


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes run on CUDA: the powers of two below `max_batch_size`, and it.

    e.g. 64 -> (1, 2, 4, 8, 16, 32, 64); 48 -> (1, 2, 4, 8, 16, 32, 48). Any batch is padded
    to the smallest that holds it, so at most twice the rows run, and every shape the CUDA
    provider ever sees was tuned at load.
    """
    top = max(1, max_batch_size)
    sizes = []
    size = 1
    while size < top:
        sizes.append(size)
        size *= 2
    return (*sizes, top)


def padded_size(batch_size: int, buckets: tuple[int, ...]) -> int:
    """The bucket a batch of `batch_size` runs as (itself when larger than every bucket)."""
    for bucket in buckets:
        if bucket >= batch_size:
            return bucket
    return batch_size


def warm_up_plan(provider: str, max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes run at load: every bucket on CUDA, else 1 and the largest batch."""
    if provider == CUDA_PROVIDER:
        return batch_buckets(max_batch_size)
    return tuple(sorted({1, max(1, max_batch_size)}))


def default_intra_op_threads() -> int:
    """The cores this process may run on (affinity and cgroup quota, unlike os.cpu_count)."""
    return available_cores()


class ModelRuntime:
    """One loaded ONNX model. `run` is blocking: call it from a worker thread."""

    def __init__(
        self, session: ort.InferenceSession, info: ModelInfo, *, pad_to: tuple[int, ...] = ()
    ) -> None:
        self._session = session
        self.info = info
        self.input_name = info.inputs[0].name
        self._output_names = [spec.name for spec in info.outputs]
        self.pad_to = pad_to
        """Batch sizes every batch is padded to (set by warm_up on CUDA); () = none."""

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        name: str,
        version: str,
        provider: str = "auto",
        intra_op_threads: int = 0,
        cuda_options: Mapping[str, str] | None = None,
    ) -> ModelRuntime:
        """Load `path` (a model.onnx); raises ModelLoadError saying what is wrong.

        `cuda_options` (config.pbtxt's, core/model_config.py) go to the CUDA provider.
        """
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
        session = _create_session(path, provider, threads, disabled_optimizers, cuda_options)
        in_use = session.get_providers()[0]
        provider_options = dict(session.get_provider_options().get(in_use, {}))
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
            provider_options=MappingProxyType(provider_options if in_use != CPU_PROVIDER else {}),
        )
        logger.info(
            "model loaded: name=%s version=%s path=%s sha256=%s provider=%s threads=%d%s",
            name,
            version,
            path,
            sha256,
            in_use,
            threads,
            f" cuda_options={dict(cuda_options)}"
            if cuda_options and in_use == CUDA_PROVIDER
            else "",
        )
        return cls(session, info)

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch; all outputs by name. The array goes to ONNX Runtime as is (no
        copy), unless `pad_to` asks for a larger batch: then zero rows are added and the
        outputs cut back to the batch's rows."""
        rows = pixels.shape[0] if pixels.ndim else 0
        size = padded_size(rows, self.pad_to) if self.pad_to else rows
        if size != rows:
            padded = np.zeros((size, *pixels.shape[1:]), dtype=pixels.dtype)
            padded[:rows] = pixels
            pixels = padded
        results = self._session.run(self._output_names, {self.input_name: pixels})
        if size != rows:
            results = [
                result[:rows] if result.ndim and result.shape[0] == size else result
                for result in results
            ]
        return dict(zip(self._output_names, results, strict=True))

    def warm_up(self, max_batch_size: int) -> tuple[int, ...]:
        """Run each batch size of `warm_up_plan` once, so no caller pays a set-up cost; on
        CUDA also pad every later batch to those sizes (`pad_to`). Returns the plan."""
        plan = warm_up_plan(self.info.provider, max_batch_size)
        if self.info.provider == CUDA_PROVIDER:
            self.pad_to = plan
        spec = self.info.inputs[0]
        item_shape = tuple(
            WARM_UP_DYNAMIC_SIZE if dim == DYNAMIC_DIM else dim for dim in spec.shape[1:]
        )
        for batch_size in plan:
            self.run(np.zeros((batch_size, *item_shape), dtype=spec.numpy_dtype))
        if self.pad_to:
            logger.info(
                "model warmed: name=%s version=%s batches padded to %s",
                self.info.name,
                self.info.version,
                list(plan),
            )
        return plan


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
    path: Path,
    provider: str,
    threads: int,
    disabled_optimizers: list[str],
    cuda_options: Mapping[str, str] | None = None,
) -> ort.InferenceSession:
    want_cuda = choose_provider(provider).cuda
    providers: list[str | tuple[str, dict[str, str]]] = [CPU_PROVIDER]
    if want_cuda:
        providers = [(CUDA_PROVIDER, dict(cuda_options or {})), CPU_PROVIDER]
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
                f"onnxruntime warnings above; {WHAT_TO_DO_WITHOUT_GPU}"
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
