"""Per-model configuration: Triton's `config.pbtxt` (a subset of its ModelConfig) over the
server's flags, with the ONNX graph filling in what neither says (Triton's auto-complete).

`config.pbtxt` is optional. What it may set: `name` (must match the folder), `platform` /
`backend` (ONNX Runtime only), `max_batch_size`, `input` / `output` (checked against the
graph at load), `version_policy` (latest N, all, specific),
`dynamic_batching { max_queue_delay_microseconds }` and the CUDA provider's options as
Triton's ONNX Runtime backend reads them, `parameters { key: "cudnn_conv_algo_search"
value: { string_value: "1" } }` (CUDA_OPTIONS: also gpu_mem_limit, arena_extend_strategy,
do_copy_in_default_stream, cudnn_conv_use_max_workspace, device_id) and `shadow_version`
(core/shadow.py). Absent, a model gets
the server's flags and the default policy, the latest version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from google.protobuf import text_format

from mnist_serving_proto import model_config_pb2
from mnist_serving_server.core.errors import ModelLoadError

CONFIG_FILE_NAME: Final = "config.pbtxt"
SHADOW_VERSION_PARAMETER: Final = "shadow_version"
PLATFORM: Final = "onnxruntime_onnx"
"""Triton's platform name for ONNX models run by ONNX Runtime."""
BACKEND: Final = "onnxruntime"
DEFAULT_LATEST_VERSIONS: Final = 1
"""Triton's default version policy: serve the latest version only."""
MICROSECONDS_PER_SECOND: Final = 1_000_000
# Triton's data type enum names are "TYPE_" + the V2 datatype, except strings.
_TYPE_PREFIX: Final = "TYPE_"
_TRITON_STRING: Final = "TYPE_STRING"
_V2_BYTES: Final = "BYTES"


def _non_negative_int(value: str) -> str | None:
    return str(int(value)) if value.isdigit() else None


def _positive_int(value: str) -> str | None:
    return str(int(value)) if value.isdigit() and int(value) > 0 else None


def _one_of(names: Mapping[str, str]) -> Callable[[str], str | None]:
    """Triton's integer values ("1") or ONNX Runtime's names ("HEURISTIC") -> the name."""
    by_value = {**{name.lower(): name for name in names.values()}, **names}
    return lambda value: by_value.get(value.strip().lower(), by_value.get(value.strip()))


_FLAG = _one_of({"0": "0", "1": "1", "false": "0", "true": "1"})
CUDA_OPTIONS: Final[Mapping[str, tuple[Callable[[str], str | None], str]]] = {
    "cudnn_conv_algo_search": (
        _one_of({"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}),
        "0/EXHAUSTIVE, 1/HEURISTIC or 2/DEFAULT",
    ),
    "gpu_mem_limit": (_positive_int, "a number of bytes >= 1"),
    "arena_extend_strategy": (
        _one_of({"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}),
        "0/kNextPowerOfTwo or 1/kSameAsRequested",
    ),
    "do_copy_in_default_stream": (_FLAG, "0 or 1"),
    "cudnn_conv_use_max_workspace": (_FLAG, "0 or 1"),
    "device_id": (_non_negative_int, "a GPU index >= 0"),
}
"""config.pbtxt `parameters` that go to ONNX Runtime's CUDA provider: name -> (the value
as ONNX Runtime takes it, None when invalid; what is valid). Other parameters are ignored,
as before (Triton's backends read their own)."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which version folders of a model are served."""

    latest: int | None = DEFAULT_LATEST_VERSIONS
    """Serve the `latest` highest versions; None with `specific` None means all."""
    specific: tuple[int, ...] | None = None
    """Serve exactly these versions (those that exist)."""

    def select(self, available: Sequence[int]) -> tuple[int, ...]:
        """The versions to serve out of `available`, ascending."""
        ordered = sorted(available)
        if self.specific is not None:
            return tuple(v for v in ordered if v in self.specific)
        if self.latest is not None:
            return tuple(ordered[-self.latest :])
        return tuple(ordered)

    def describe(self) -> str:
        if self.specific is not None:
            return f"specific {list(self.specific)}"
        if self.latest is not None:
            return f"latest {self.latest}"
        return "all"


@dataclass(frozen=True)
class TensorConfig:
    """An input or output as config.pbtxt declares it (dims exclude the batch dimension)."""

    name: str
    datatype: str
    """KServe V2 name: UINT8, FP32, BYTES, ..."""
    dims: tuple[int, ...]
    """-1 for a variable dimension."""


@dataclass(frozen=True)
class ModelConfig:
    """The effective configuration of one model (every version of it)."""

    name: str
    max_batch_size: int
    max_queue_delay_s: float
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    inputs: tuple[TensorConfig, ...] | None = None
    """Declared in config.pbtxt (checked against the graph), None = taken from the graph."""
    outputs: tuple[TensorConfig, ...] | None = None
    from_file: bool = False
    """A config.pbtxt exists (else everything is the server's defaults and the graph)."""
    cuda_options: tuple[tuple[str, str], ...] = ()
    """CUDA provider options from `parameters` (CUDA_OPTIONS), as ONNX Runtime takes them,
    sorted by name; applied when the model runs on CUDA."""
    shadow_version: str = ""
    """`parameters { key: "shadow_version" ... }`: the loaded version that gets a copy of
    every image the serving version answers (core/shadow.py); "" = none."""

    @property
    def cuda_provider_options(self) -> dict[str, str]:
        return dict(self.cuda_options)


def triton_type_name(datatype: str) -> str:
    """V2 datatype -> Triton's DataType enum name ("FP32" -> "TYPE_FP32", "BYTES" ->
    "TYPE_STRING")."""
    return _TRITON_STRING if datatype == _V2_BYTES else _TYPE_PREFIX + datatype


def v2_type_name(triton_name: str) -> str:
    """Triton's DataType enum name -> V2 datatype (the inverse of triton_type_name)."""
    if triton_name == _TRITON_STRING:
        return _V2_BYTES
    return triton_name.removeprefix(_TYPE_PREFIX)


def read_model_config(
    model_dir: Path, *, default_max_batch_size: int, default_max_queue_delay_s: float
) -> ModelConfig:
    """The model's configuration; ModelLoadError saying what to fix when config.pbtxt is wrong."""
    name = model_dir.name
    path = model_dir / CONFIG_FILE_NAME
    defaults = ModelConfig(
        name=name,
        max_batch_size=default_max_batch_size,
        max_queue_delay_s=default_max_queue_delay_s,
    )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return defaults
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise ModelLoadError(
            f"{path}: not a valid Triton model configuration (this server reads name, "
            f"platform, backend, max_batch_size, input, output, version_policy and "
            f"dynamic_batching): {exc}"
        ) from None
    return _from_message(message, path, defaults)


def _from_message(
    message: model_config_pb2.ModelConfig, path: Path, defaults: ModelConfig
) -> ModelConfig:
    if message.name and message.name != defaults.name:
        raise ModelLoadError(
            f"{path}: name {message.name!r} does not match its folder {defaults.name!r}"
        )
    if message.platform and message.platform != PLATFORM:
        raise ModelLoadError(
            f"{path}: platform {message.platform!r} is not served; this server runs "
            f"ONNX models ({PLATFORM!r})"
        )
    if message.backend and message.backend != BACKEND:
        raise ModelLoadError(
            f"{path}: backend {message.backend!r} is not served; this server runs {BACKEND!r}"
        )
    if message.max_batch_size < 0:
        raise ModelLoadError(f"{path}: max_batch_size must be >= 1, got {message.max_batch_size}")
    delay_s = defaults.max_queue_delay_s
    if message.HasField("dynamic_batching"):
        delay_s = message.dynamic_batching.max_queue_delay_microseconds / MICROSECONDS_PER_SECOND
    return ModelConfig(
        name=defaults.name,
        # 0 (unset in proto3) keeps the server's --max-batch-size.
        max_batch_size=message.max_batch_size or defaults.max_batch_size,
        max_queue_delay_s=delay_s,
        version_policy=_version_policy(message, path),
        inputs=_tensors(message.input) if len(message.input) else None,
        outputs=_tensors(message.output) if len(message.output) else None,
        from_file=True,
        cuda_options=_cuda_options(message, path),
        shadow_version=_shadow_version(message, path),
    )


def _shadow_version(message: model_config_pb2.ModelConfig, path: Path) -> str:
    if SHADOW_VERSION_PARAMETER not in message.parameters:
        return ""
    raw = message.parameters[SHADOW_VERSION_PARAMETER].string_value.strip()
    if not raw.isdigit():
        raise ModelLoadError(
            f"{path}: parameters {SHADOW_VERSION_PARAMETER!r} is {raw!r}; it names a version "
            "folder of the model (an integer)"
        )
    return str(int(raw))


def _cuda_options(message: model_config_pb2.ModelConfig, path: Path) -> tuple[tuple[str, str], ...]:
    options = []
    for key in sorted(message.parameters):
        if key not in CUDA_OPTIONS:
            continue
        parse, valid = CUDA_OPTIONS[key]
        raw = message.parameters[key].string_value
        value = parse(raw)
        if value is None:
            raise ModelLoadError(
                f"{path}: parameters {key!r} is {raw!r}; the CUDA provider takes {valid}"
            )
        options.append((key, value))
    return tuple(options)


def _version_policy(message: model_config_pb2.ModelConfig, path: Path) -> VersionPolicy:
    if not message.HasField("version_policy"):
        return VersionPolicy()
    policy = message.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "latest":
        if policy.latest.num_versions < 1:
            raise ModelLoadError(
                f"{path}: version_policy latest num_versions must be >= 1, "
                f"got {policy.latest.num_versions}"
            )
        return VersionPolicy(latest=policy.latest.num_versions)
    if kind == "specific":
        if not policy.specific.versions:
            raise ModelLoadError(f"{path}: version_policy specific lists no versions")
        return VersionPolicy(latest=None, specific=tuple(int(v) for v in policy.specific.versions))
    return VersionPolicy(latest=None)  # "all" (an empty choice also means all in Triton)


def _tensors(
    declared: Sequence[model_config_pb2.ModelInput] | Sequence[model_config_pb2.ModelOutput],
) -> tuple[TensorConfig, ...]:
    return tuple(
        TensorConfig(
            name=tensor.name,
            datatype=v2_type_name(model_config_pb2.DataType.Name(tensor.data_type)),
            dims=tuple(int(d) for d in tensor.dims),
        )
        for tensor in declared
    )
