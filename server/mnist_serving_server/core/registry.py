"""The model repository while serving: which model versions answer, and changing them.

Each served version has its own ONNX Runtime session and its own DynamicBatcher. A load
reads the model's folder, loads the versions its policy wants that are new or changed
**first** (session, contract check, warm-up, batcher), then swaps them in with one
assignment, then retires the versions no longer wanted: each finishes what its queue
already accepted before its batcher stops and its session is dropped. A failed load
keeps the old versions serving and reports why. Loads and unloads of one model are
serialised by a per-model lock; different models load independently.

The swap is safe without per-request bookkeeping because transports resolve a version
and submit to its batcher in one synchronous step (no await in between): once the swap
has happened, no new request can reach a retired batcher, and `drain()` waits only for
what it had already accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from mnist_serving_server.core.batcher import BatcherObserver, DynamicBatcher
from mnist_serving_server.core.errors import (
    FailedPreconditionError,
    ModelLoadError,
    ModelNotFoundError,
)
from mnist_serving_server.core.model_config import (
    CONFIG_FILE_NAME,
    ModelConfig,
    TensorConfig,
    read_model_config,
)
from mnist_serving_server.core.repository import (
    MODEL_FILE_NAME,
    is_version_name,
    list_versions,
    model_names,
)
from mnist_serving_server.core.runtime import DYNAMIC_DIM, ModelInfo, ModelRuntime, TensorSpec
from mnist_serving_server.core.statistics import StatisticsObserver, VersionStatistics

logger = logging.getLogger(__name__)

PREFERRED_DEFAULT_MODEL: Final = "mnist"
"""The model an empty model name means when the repository holds several and none is set."""
PROBABILITIES_OUTPUT: Final = "probabilities"
"""The output an image classifier must have for the Classify API."""
CLASSIFIER_INPUT_DATATYPE: Final = "UINT8"
UNLOADED_REASON: Final = "unloaded"
DEFAULT_LOAD_TIMEOUT_S: Final = 120.0
"""How long one version's load (session creation and warm-up) may take before it fails."""


class ModelState(StrEnum):
    """A model version's state, as Triton's repository index names them."""

    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"


@dataclass(frozen=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    """"" for a model with no version loaded."""
    state: ModelState
    reason: str


@dataclass(frozen=True)
class ClassifierContract:
    """How the Classify API feeds an image classifier."""

    image_shape: tuple[int, ...]
    """One image as the model takes it, e.g. (1, 28, 28) or (28, 28)."""
    num_classes: int


@dataclass(frozen=True)
class RegistryOptions:
    """The server-wide defaults a model's config.pbtxt may override."""

    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int
    provider: str
    intra_op_threads: int
    default_model: str | None
    """None: `mnist` when the repository has it, else its only model."""
    retire_timeout_s: float
    """How long a retired version may take to finish what it had accepted."""
    batch_latency_target_s: float = 0.0
    """> 0: every batcher adapts its queue delay to this latency (DynamicBatcher)."""
    load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S
    """How long one version's load may take; then it fails and the old versions keep serving.
    (The thread stuck in ONNX Runtime cannot be stopped: it ends on its own, or never, and
    its session is dropped.)"""


# (model, version, state, info or None) -> None: metrics follow the states.
StateListener = Callable[[str, str, ModelState, ModelInfo | None], None]
ObserverFactory = Callable[[ModelInfo], BatcherObserver]


class ServedVersion:
    """One loaded model version: session, batcher, statistics and what APIs it fits."""

    __slots__ = (
        "batcher",
        "classifier",
        "classifier_problem",
        "config",
        "file_key",
        "info",
        "name",
        "output_names",
        "runtime",
        "statistics",
        "version",
    )

    def __init__(
        self,
        runtime: ModelRuntime,
        batcher: DynamicBatcher,
        config: ModelConfig,
        statistics: VersionStatistics,
        file_key: tuple[int, ...],
    ) -> None:
        self.runtime = runtime
        self.batcher = batcher
        self.config = config
        self.statistics = statistics
        self.file_key = file_key
        self.info: ModelInfo = runtime.info
        self.name = runtime.info.name
        self.version = runtime.info.version
        self.output_names = tuple(spec.name for spec in runtime.info.outputs)
        self.classifier, self.classifier_problem = classifier_contract(runtime.info)

    @property
    def ready(self) -> bool:
        return self.batcher.running


class _Model:
    """A model folder of the repository and the versions of it being served."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.config: ModelConfig | None = None
        self.versions: dict[str, ServedVersion] = {}
        self.latest: ServedVersion | None = None
        self.reason = UNLOADED_REASON
        self.failed_versions: dict[str, str] = {}
        self.loading = False
        self.fingerprint: object = None
        self.lock = asyncio.Lock()


class ModelRegistry:
    """Every model of one repository folder; `resolve` is the per-request lookup."""

    def __init__(
        self,
        repository: Path,
        options: RegistryOptions,
        *,
        observer_for: ObserverFactory | None = None,
        on_state: StateListener | None = None,
    ) -> None:
        self.repository = repository
        self._options = options
        self._observer_for = observer_for
        self._on_state = on_state
        self._models: dict[str, _Model] = {}
        self._default = ""
        self._stopping = False

    # --- start and stop ------------------------------------------------------------------

    def resolve_default_model(self) -> str:
        """Pick the default model from the folders present; ModelLoadError when ambiguous."""
        names = model_names(self.repository)
        if not names:
            raise ModelLoadError(
                f"no models in the repository {self.repository}: expected "
                f"{self.repository}/<model>/<version>/{MODEL_FILE_NAME} "
                "(run `make train-export` to create one)"
            )
        wanted = self._options.default_model
        if wanted is not None:
            if wanted not in names:
                raise ModelLoadError(
                    f"default model {wanted!r} is not in the repository {self.repository} "
                    f"(models there: {', '.join(names)})"
                )
            self._default = wanted
        elif PREFERRED_DEFAULT_MODEL in names:
            self._default = PREFERRED_DEFAULT_MODEL
        elif len(names) == 1:
            self._default = names[0]
        else:
            raise ModelLoadError(
                f"the repository {self.repository} holds {len(names)} models "
                f"({', '.join(names)}) and none is named {PREFERRED_DEFAULT_MODEL!r}: set "
                "--default-model (MNIST_SERVING_DEFAULT_MODEL) to the one a request without "
                "a model name means"
            )
        return self._default

    @property
    def default_model(self) -> str:
        return self._default

    async def load_all(self) -> None:
        """Load every model of the repository; ModelLoadError when not one of them loads."""
        if not self._default:
            self.resolve_default_model()
        failures: list[str] = []
        for name in model_names(self.repository):
            try:
                await self.load(name)
            except (FailedPreconditionError, ModelNotFoundError) as exc:
                failures.append(str(exc))
        if not self.any_ready:
            raise ModelLoadError("no model could be loaded: " + "; ".join(failures))

    async def stop(self) -> None:
        """Stop every batcher (what is still queued fails with NotReadyError)."""
        self._stopping = True
        for model in list(self._models.values()):
            versions = list(model.versions.values())
            model.versions = {}
            model.latest = None
            for served in versions:
                await served.batcher.stop()

    # --- the per-request path --------------------------------------------------------------

    def resolve(self, name: str, version: str) -> ServedVersion:
        """The served version a request names ("" = the default model, its latest version)."""
        model = self._models.get(name or self._default)
        if model is not None:
            served = model.latest if not version else model.versions.get(version)
            if served is not None:
                return served
        raise self._not_found(name or self._default, version)

    def _not_found(self, name: str, version: str) -> ModelNotFoundError:
        """Built only for the error: names what is served instead."""
        model = self._models.get(name)
        if model is None or not model.versions:
            if name in self._loadable_names():
                reason = UNLOADED_REASON if model is None else model.reason
                return ModelNotFoundError(f"model {name!r} is not loaded ({reason})")
            served = ", ".join(sorted(n for n, m in self._models.items() if m.versions))
            return ModelNotFoundError(
                f"model {name!r} is not in the repository; models served: {served or 'none'}"
            )
        return ModelNotFoundError(
            f"version {version!r} of model {name!r} is not served; versions served: "
            f"{', '.join(sorted(model.versions, key=int))}"
        )

    # --- what the APIs read --------------------------------------------------------------

    @property
    def any_ready(self) -> bool:
        return any(
            served.ready for model in self._models.values() for served in model.versions.values()
        )

    def served_versions(self, name: str = "", version: str = "") -> list[ServedVersion]:
        """Every served version, or those of one model (and version); "" means all."""
        if name:
            if version:
                return [self.resolve(name, version)]
            model = self._models.get(name)
            if model is None or not model.versions:
                raise self._not_found(name, version)
            return [model.versions[v] for v in sorted(model.versions, key=int)]
        return [
            model.versions[v]
            for model in self._models.values()
            for v in sorted(model.versions, key=int)
        ]

    def model_config(self, name: str) -> ModelConfig:
        model = self._models.get(name or self._default)
        if model is None or model.config is None or not model.versions:
            raise self._not_found(name or self._default, "")
        return model.config

    def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the repository folder (and any still served), by name and version."""
        entries: list[IndexEntry] = []
        for name in sorted(set(self._loadable_names()) | set(self._models)):
            model = self._models.get(name)
            if model is None:
                entries.append(IndexEntry(name, "", ModelState.UNAVAILABLE, UNLOADED_REASON))
                continue
            for version in sorted(model.versions, key=int):
                state = (
                    ModelState.READY if model.versions[version].ready else ModelState.UNAVAILABLE
                )
                reason = "" if state is ModelState.READY else "batch loop stopped"
                entries.append(IndexEntry(name, version, state, reason))
            for version, reason in sorted(model.failed_versions.items()):
                if version not in model.versions:
                    entries.append(IndexEntry(name, version, ModelState.UNAVAILABLE, reason))
            if not model.versions and not model.failed_versions:
                state = ModelState.LOADING if model.loading else ModelState.UNAVAILABLE
                entries.append(IndexEntry(name, "", state, "" if model.loading else model.reason))
        if ready_only:
            entries = [entry for entry in entries if entry.state is ModelState.READY]
        return entries

    # --- changes while serving -----------------------------------------------------------

    async def load(self, name: str) -> None:
        """(Re)load `name` from its folder; FailedPreconditionError when it cannot be served.

        Versions that are unchanged (same file, same config) keep serving untouched.
        """
        if not name or not (self.repository / name).is_dir() or not is_model_name(name):
            raise ModelNotFoundError(
                f"no model folder {name!r} in the repository {self.repository}"
            )
        model = self._models.get(name)
        if model is None:
            model = self._models[name] = _Model(name)
        async with model.lock:
            await self._reload(model)

    async def unload(self, name: str) -> None:
        """Stop serving `name`: its versions finish what they accepted, then stop."""
        model = self._models.get(name)
        if model is None:
            if name in self._loadable_names():
                return  # in the repository but not loaded: nothing to do
            raise ModelNotFoundError(f"model {name!r} is not in the repository")
        async with model.lock:
            retired = list(model.versions.values())
            model.versions = {}
            model.latest = None
            model.failed_versions = {}
            model.reason = UNLOADED_REASON
            model.fingerprint = None
            for served in retired:
                await self._retire(served)
            logger.info("model unloaded: %s", name)

    async def poll(self) -> None:
        """Apply what changed in the repository folder since the last look (poll mode)."""
        present = set(self._loadable_names())
        for name in sorted(present):
            model = self._models.get(name)
            if model is not None and model.fingerprint == self._fingerprint(name):
                continue
            with contextlib.suppress(FailedPreconditionError, ModelNotFoundError):
                await self.load(name)  # a failure is logged and shown in the index
        for name in sorted(set(self._models) - present):
            await self.unload(name)
            if name not in self._loadable_names():  # still gone: forget it entirely
                self._models.pop(name, None)

    # --- internals -------------------------------------------------------------------------

    def _loadable_names(self) -> list[str]:
        return model_names(self.repository)

    def _fingerprint(self, name: str) -> object:
        """Cheap identity of a model folder: config text and each version file's stat."""
        model_dir = self.repository / name
        try:
            config_text = (model_dir / CONFIG_FILE_NAME).read_bytes()
        except OSError:
            config_text = b""
        return (
            config_text,
            tuple(
                (version, _file_key(model_dir / str(version) / MODEL_FILE_NAME))
                for version in list_versions(self.repository, name)
            ),
        )

    async def _reload(self, model: _Model) -> None:
        if self._stopping:
            raise FailedPreconditionError("the server is shutting down")
        name = model.name
        model.fingerprint = self._fingerprint(name)
        model.loading = True
        try:
            fresh: list[ServedVersion] = []
            chosen: dict[str, ServedVersion] = {}
            try:
                wanted, config = self._wanted_versions(model)
                for version in wanted:
                    path = self.repository / name / str(version) / MODEL_FILE_NAME
                    current = model.versions.get(str(version))
                    key = _file_key(path)
                    if current is not None and current.file_key == key and current.config == config:
                        chosen[str(version)] = current
                        continue
                    self._notify(name, str(version), ModelState.LOADING, None)
                    try:
                        served = await self._load_version(path, name, version, config, key)
                    except ModelLoadError as exc:
                        model.failed_versions = {str(version): str(exc)}
                        raise
                    fresh.append(served)
                    chosen[str(version)] = served
            except ModelLoadError as exc:
                for served in fresh:
                    await served.batcher.stop()
                if not model.versions:
                    model.reason = str(exc)
                keeps = " (the versions already served keep serving)" if model.versions else ""
                logger.error("model %s failed to load%s: %s", name, keeps, exc)
                raise FailedPreconditionError(
                    f"failed to load model {name!r}{keeps}: {exc}"
                ) from None
        finally:
            model.loading = False
        retired = [s for v, s in model.versions.items() if chosen.get(v) is not s]
        # The swap: from here on every new request resolves to the chosen versions.
        model.config = config
        model.versions = chosen
        model.latest = chosen[max(chosen, key=int)]
        model.failed_versions = {}
        model.reason = ""
        for served in fresh:
            self._notify(name, served.version, ModelState.READY, served.info)
        logger.info(
            "model ready: %s versions %s (policy %s)",
            name,
            ", ".join(sorted(chosen, key=int)),
            config.version_policy.describe(),
        )
        for served in retired:
            await self._retire(served)

    def _wanted_versions(self, model: _Model) -> tuple[tuple[int, ...], ModelConfig]:
        options = self._options
        config = read_model_config(
            self.repository / model.name,
            default_max_batch_size=options.max_batch_size,
            default_max_queue_delay_s=options.max_queue_delay_s,
        )
        available = list_versions(self.repository, model.name)
        wanted = config.version_policy.select(available)
        if not wanted:
            raise ModelLoadError(
                f"no version of {model.name!r} to serve: version folders "
                f"{available or 'none'} holding {MODEL_FILE_NAME}, policy "
                f"{config.version_policy.describe()}"
            )
        return wanted, config

    async def _load_version(
        self, path: Path, name: str, version: int, config: ModelConfig, key: tuple[int, ...]
    ) -> ServedVersion:
        options = self._options
        try:
            async with asyncio.timeout(options.load_timeout_s):
                runtime = await asyncio.to_thread(
                    ModelRuntime.load,
                    path,
                    name=name,
                    version=str(version),
                    provider=options.provider,
                    intra_op_threads=options.intra_op_threads,
                )
                check_contract(runtime.info, config)
                await asyncio.to_thread(runtime.warm_up, config.max_batch_size)
        except TimeoutError:
            raise ModelLoadError(
                f"{path}: loading did not finish within {options.load_timeout_s:g} s "
                "(--model-load-timeout-s); abandoned"
            ) from None
        statistics = VersionStatistics()
        forward = None if self._observer_for is None else self._observer_for(runtime.info)
        batcher = DynamicBatcher(
            runtime.run,
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.max_queue_delay_s,
            max_queue_size=options.max_queue_size,
            latency_target_s=options.batch_latency_target_s,
            observer=StatisticsObserver(statistics, forward),
            on_failure=lambda exc: self._batcher_failed(name, str(version), exc),
        )
        await batcher.start()
        return ServedVersion(runtime, batcher, config, statistics, key)

    async def _retire(self, served: ServedVersion) -> None:
        self._notify(served.name, served.version, ModelState.UNLOADING, served.info)
        if not await served.batcher.drain(self._options.retire_timeout_s):
            logger.warning(
                "model %s version %s: in-flight work did not finish within %.1f s of retiring",
                served.name,
                served.version,
                self._options.retire_timeout_s,
            )
        await served.batcher.stop()
        self._notify(served.name, served.version, ModelState.UNAVAILABLE, served.info)
        logger.info("model version retired: %s version %s", served.name, served.version)

    def _batcher_failed(self, name: str, version: str, exc: BaseException) -> None:
        logger.error("model %s version %s: batch loop died", name, version, exc_info=exc)
        self._notify(name, version, ModelState.UNAVAILABLE, None)

    def _notify(self, name: str, version: str, state: ModelState, info: ModelInfo | None) -> None:
        if self._on_state is not None:
            try:
                self._on_state(name, version, state, info)
            except Exception:
                logger.exception("model state listener failed")


def is_model_name(name: str) -> bool:
    """A folder that can be a model: not hidden, not a version number."""
    return bool(name) and not name.startswith(".") and not is_version_name(name)


def _file_key(path: Path) -> tuple[int, ...]:
    """Changes when the file is replaced or rewritten (inode, size, mtime)."""
    try:
        stat = os.stat(path)
    except OSError:
        return ()
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def check_contract(info: ModelInfo, config: ModelConfig) -> None:
    """ModelLoadError unless the batcher can serve the graph as config.pbtxt describes it."""
    for spec in (*info.inputs, *info.outputs):
        if not spec.shape or spec.shape[0] != DYNAMIC_DIM:
            raise ModelLoadError(
                f"{info.path}: tensor {spec.name!r} has shape {list(spec.shape)}; the server "
                "batches requests, so its first dimension must be a dynamic batch dimension"
            )
    for declared, actual, kind in (
        (config.inputs, info.inputs, "input"),
        (config.outputs, info.outputs, "output"),
    ):
        if declared is not None:
            _check_declared(declared, actual, kind, info)


def _check_declared(
    declared: Iterable[TensorConfig], actual: tuple[TensorSpec, ...], kind: str, info: ModelInfo
) -> None:
    by_name = {spec.name: spec for spec in actual}
    for tensor in declared:
        spec = by_name.get(tensor.name)
        if spec is None:
            raise ModelLoadError(
                f"{CONFIG_FILE_NAME} of {info.name!r} declares {kind} {tensor.name!r}, which the "
                f"graph does not have (its {kind}s: {', '.join(by_name)})"
            )
        graph_dims = spec.shape[1:]
        dims_match = len(graph_dims) == len(tensor.dims) and all(
            d in (DYNAMIC_DIM, g) or g == DYNAMIC_DIM
            for d, g in zip(tensor.dims, graph_dims, strict=True)
        )
        if tensor.datatype != spec.datatype or not dims_match:
            raise ModelLoadError(
                f"{CONFIG_FILE_NAME} of {info.name!r}: {kind} {tensor.name!r} is declared "
                f"{tensor.datatype} {list(tensor.dims)} but the graph has {spec.datatype} "
                f"{list(graph_dims)} (dims exclude the batch dimension)"
            )


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
