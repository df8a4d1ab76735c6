"""The model repository while serving: which model versions answer, and changing them.

Each served version has its own ONNX Runtime session and its own DynamicBatcher, built by
a VersionFactory (core/version_factory.py). A load reads the model's folder, loads the
versions its policy wants that are new or changed **first** (session, contract check,
warm-up, batcher), then swaps them in with one assignment, then retires the versions no
longer wanted: each finishes what its queue already accepted before its batcher stops and
its session is dropped. A failed load keeps the old versions serving and reports why.
Loads and unloads of one model are serialised by a per-model lock; different models load
independently.

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
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from mnist_serving_server.core.batcher import DynamicBatcher
from mnist_serving_server.core.classifier import classifier_contract
from mnist_serving_server.core.errors import (
    FailedPreconditionError,
    ModelLoadError,
    ModelNotFoundError,
)
from mnist_serving_server.core.model_config import CONFIG_FILE_NAME, ModelConfig, read_model_config
from mnist_serving_server.core.monitoring import DEFAULT_WINDOW
from mnist_serving_server.core.repository import (
    MODEL_FILE_NAME,
    is_version_name,
    list_versions,
    model_names,
)
from mnist_serving_server.core.runtime import ModelInfo, ModelRuntime
from mnist_serving_server.core.shadow import SHADOW_QUEUE_BATCHES, BatchTap, ShadowLink
from mnist_serving_server.core.statistics import VersionStatistics
from mnist_serving_server.core.version_factory import (
    ObserverFactory,
    OnnxVersionFactory,
    VersionFactory,
)

logger = logging.getLogger(__name__)

PREFERRED_DEFAULT_MODEL: Final = "mnist"
"""The model an empty model name means when the repository holds several and none is set."""
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
    monitoring_window: int = DEFAULT_WINDOW
    """Images in each classifier version's drift window (core/monitoring.py); 0 = no
    prediction monitoring at all."""


# (model, version, state, info or None) -> None: metrics follow the states.
StateListener = Callable[[str, str, ModelState, ModelInfo | None], None]


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
        "tap",
        "version",
    )

    def __init__(
        self,
        runtime: ModelRuntime,
        batcher: DynamicBatcher,
        config: ModelConfig,
        statistics: VersionStatistics,
        file_key: tuple[int, ...],
        tap: BatchTap | None = None,
    ) -> None:
        self.runtime = runtime
        self.tap = tap
        self.batcher = batcher
        self.config = config
        self.statistics = statistics
        self.file_key = file_key
        self.info: ModelInfo = runtime.info
        self.name = runtime.info.name
        self.version = runtime.info.version
        self.output_names = tuple(spec.name for spec in runtime.info.outputs)
        # Computed once here, so that a Classify request pays nothing for it (core/classifier.py).
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
        self.shadow_problem = ""
        """Why the last load failed on its shadow_version while older versions serve."""
        self.loading = False
        self.fingerprint: object = None
        self.lock = asyncio.Lock()

    def index_entries(self) -> list[IndexEntry]:
        """Its rows of the repository index: served versions, failed ones, or the model."""
        entries: list[IndexEntry] = []
        shadow = "" if self.config is None else self.config.shadow_version
        for version in sorted(self.versions, key=int):
            ready = self.versions[version].ready
            state = ModelState.READY if ready else ModelState.UNAVAILABLE
            reason = "" if ready else "batch loop stopped"
            if version == shadow and self.latest is not None:
                reason = f"shadow of version {self.latest.version}" + (reason and f"; {reason}")
            entries.append(IndexEntry(self.name, version, state, reason))
        if self.shadow_problem and self.versions:
            entries.append(IndexEntry(self.name, "", ModelState.UNAVAILABLE, self.shadow_problem))
        for version, reason in sorted(self.failed_versions.items()):
            if version not in self.versions:
                entries.append(IndexEntry(self.name, version, ModelState.UNAVAILABLE, reason))
        if not self.versions and not self.failed_versions:
            state = ModelState.LOADING if self.loading else ModelState.UNAVAILABLE
            entries.append(IndexEntry(self.name, "", state, "" if self.loading else self.reason))
        return entries


class ModelRegistry:
    """Every model of one repository folder; `resolve` is the per-request lookup.

    `factory` builds each version's parts; by default ONNX Runtime sessions behind
    DynamicBatchers as `options` say, their batches reported to `observer_for`'s observer.
    """

    def __init__(
        self,
        repository: Path,
        options: RegistryOptions,
        *,
        observer_for: ObserverFactory | None = None,
        on_state: StateListener | None = None,
        factory: VersionFactory | None = None,
    ) -> None:
        self.repository = repository
        self._options = options
        if factory is None:
            factory = OnnxVersionFactory(
                provider=options.provider,
                intra_op_threads=options.intra_op_threads,
                max_queue_size=options.max_queue_size,
                load_timeout_s=options.load_timeout_s,
                batch_latency_target_s=options.batch_latency_target_s,
                observer_for=observer_for,
                monitoring_window=options.monitoring_window,
            )
        self._loader = _VersionLoader(repository, options, factory, on_state)
        self._models: dict[str, _Model] = {}
        self._default = ""
        self._stopping = False

    # --- start and stop ------------------------------------------------------------------

    def resolve_default_model(self) -> str:
        """Pick the default model from the folders present; ModelLoadError when ambiguous."""
        self._default = choose_default_model(self.repository, self._options.default_model)
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
            if name in model_names(self.repository):
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
        for name in sorted(set(model_names(self.repository)) | set(self._models)):
            model = self._models.get(name)
            if model is None:
                entries.append(IndexEntry(name, "", ModelState.UNAVAILABLE, UNLOADED_REASON))
            else:
                entries.extend(model.index_entries())
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
            if name in model_names(self.repository):
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
                await self._loader.retire(served)
            logger.info("model unloaded: %s", name)

    async def poll(self) -> None:
        """Apply what changed in the repository folder since the last look (poll mode)."""
        present = set(model_names(self.repository))
        for name in sorted(present):
            model = self._models.get(name)
            if model is not None and model.fingerprint == folder_fingerprint(self.repository, name):
                continue
            with contextlib.suppress(FailedPreconditionError, ModelNotFoundError):
                await self.load(name)  # a failure is logged and shown in the index
        for name in sorted(set(self._models) - present):
            await self.unload(name)
            if name not in model_names(self.repository):  # still gone: forget it entirely
                self._models.pop(name, None)

    # --- internals -------------------------------------------------------------------------

    async def _reload(self, model: _Model) -> None:
        if self._stopping:
            raise FailedPreconditionError("the server is shutting down")
        model.fingerprint = folder_fingerprint(self.repository, model.name)
        model.loading = True
        try:
            config = self._loader.read_config(model.name)
            fresh, chosen = await self._loader.load_wanted(model, config)
        except ModelLoadError as exc:
            keeps = " (the versions already served keep serving)" if model.versions else ""
            if not model.versions:
                model.reason = str(exc)
            elif isinstance(exc, ShadowConfigError):
                model.shadow_problem = f"failed to load: {exc}"
            logger.error("model %s failed to load%s: %s", model.name, keeps, exc)
            raise FailedPreconditionError(
                f"failed to load model {model.name!r}{keeps}: {exc}"
            ) from None
        finally:
            model.loading = False
        retired = [s for v, s in model.versions.items() if chosen.get(v) is not s]
        # The swap: from here on every new request resolves to the chosen versions.
        model.config = config
        model.versions = chosen
        model.latest = self._loader.link_shadow(config, chosen, retired)
        model.failed_versions = {}
        model.shadow_problem = ""
        model.reason = ""
        for served in fresh:
            self._loader.notify(model.name, served.version, ModelState.READY, served.info)
        logger.info(
            "model ready: %s versions %s (policy %s)",
            model.name,
            ", ".join(sorted(chosen, key=int)),
            config.version_policy.describe(),
        )
        for served in retired:
            await self._loader.retire(served)


class _VersionLoader:
    """Builds the versions a (re)load wants and retires the ones it no longer wants.

    What happens to the versions, not when: ModelRegistry decides that, under the model's
    lock. Every state change goes to the state listener.
    """

    def __init__(
        self,
        repository: Path,
        options: RegistryOptions,
        factory: VersionFactory,
        on_state: StateListener | None,
    ) -> None:
        self._repository = repository
        self._options = options
        self._factory = factory
        self._on_state = on_state

    def read_config(self, name: str) -> ModelConfig:
        """The model's config.pbtxt, the server-wide defaults filling what it leaves out."""
        options = self._options
        return read_model_config(
            self._repository / name,
            default_max_batch_size=options.max_batch_size,
            default_max_queue_delay_s=options.max_queue_delay_s,
        )

    async def load_wanted(
        self, model: _Model, config: ModelConfig
    ) -> tuple[list[ServedVersion], dict[str, ServedVersion]]:
        """The versions the policy wants (the new or changed ones loaded), and those new.

        On ModelLoadError the new ones are stopped again; nothing is swapped in.
        """
        available = list_versions(self._repository, model.name)
        wanted = config.version_policy.select(available)
        if not wanted:
            raise ModelLoadError(
                f"no version of {model.name!r} to serve: version folders "
                f"{available or 'none'} holding {MODEL_FILE_NAME}, policy "
                f"{config.version_policy.describe()}"
            )
        shadow = config.shadow_version
        if shadow and int(shadow) not in wanted:
            raise ShadowConfigError(
                f"shadow_version {shadow!r} is not a version the policy "
                f"({config.version_policy.describe()}) loads: {', '.join(map(str, wanted))}"
            )
        if shadow and len(wanted) == 1:
            raise ShadowConfigError(
                f"shadow_version {shadow!r} would leave no serving version: the policy "
                f"({config.version_policy.describe()}) loads only it"
            )
        fresh: list[ServedVersion] = []
        chosen: dict[str, ServedVersion] = {}
        try:
            for version in map(str, wanted):
                path = self._repository / model.name / version / MODEL_FILE_NAME
                current, key = model.versions.get(version), _file_key(path)
                if current is not None and current.file_key == key and current.config == config:
                    chosen[version] = current
                    continue
                self.notify(model.name, version, ModelState.LOADING, None)
                try:
                    served = await self._load_version(path, model.name, version, config, key)
                except ModelLoadError as exc:
                    model.failed_versions = {version: str(exc)}
                    raise
                fresh.append(served)
                chosen[version] = served
        except ModelLoadError:
            for served in fresh:
                await served.batcher.stop()
            raise
        return fresh, chosen

    async def _load_version(
        self, path: Path, name: str, version: str, config: ModelConfig, key: tuple[int, ...]
    ) -> ServedVersion:
        def failed(exc: BaseException) -> None:
            self._batcher_failed(name, version, exc)

        parts = await self._factory.build(path, name, version, config, on_failure=failed)
        return ServedVersion(parts.runtime, parts.batcher, config, parts.statistics, key, parts.tap)

    def link_shadow(
        self, config: ModelConfig, chosen: dict[str, ServedVersion], retired: list[ServedVersion]
    ) -> ServedVersion:
        """The serving version (the highest that is not the shadow), its batches linked to
        the shadow's batcher when config.pbtxt names one; every other link cut."""
        shadow = chosen.get(config.shadow_version) if config.shadow_version else None
        serving = chosen[max((v for v in chosen if v != config.shadow_version), key=int)]
        for served in (*chosen.values(), *retired):
            if served.tap is not None:
                served.tap.shadow = None
        if shadow is not None and serving.tap is not None:
            limit = min(
                SHADOW_QUEUE_BATCHES * shadow.batcher.max_batch_size, self._options.max_queue_size
            )
            serving.tap.shadow = ShadowLink(
                shadow.version, shadow.batcher, serving.tap.observer, limit
            )
            logger.info(
                "model %s: version %s is the shadow of version %s",
                serving.name,
                shadow.version,
                serving.version,
            )
        return serving

    async def retire(self, served: ServedVersion) -> None:
        """Let `served` finish what it accepted (within the retire timeout), then stop it."""
        self.notify(served.name, served.version, ModelState.UNLOADING, served.info)
        if not await served.batcher.drain(self._options.retire_timeout_s):
            logger.warning(
                "model %s version %s: in-flight work did not finish within %.1f s of retiring",
                served.name,
                served.version,
                self._options.retire_timeout_s,
            )
        await served.batcher.stop()
        self.notify(served.name, served.version, ModelState.UNAVAILABLE, served.info)
        logger.info("model version retired: %s version %s", served.name, served.version)

    def notify(self, name: str, version: str, state: ModelState, info: ModelInfo | None) -> None:
        """Tell the state listener; its failure is logged, never raised into a load."""
        if self._on_state is not None:
            try:
                self._on_state(name, version, state, info)
            except Exception:
                logger.exception("model state listener failed")

    def _batcher_failed(self, name: str, version: str, exc: BaseException) -> None:
        logger.error("model %s version %s: batch loop died", name, version, exc_info=exc)
        self.notify(name, version, ModelState.UNAVAILABLE, None)


class ShadowConfigError(ModelLoadError):
    """config.pbtxt's shadow_version cannot be served (the index shows why)."""


def choose_default_model(repository: Path, wanted: str | None) -> str:
    """The model an empty model name means: `wanted` if set, else `mnist` when present, else
    the only model; ModelLoadError when there is none or the choice is ambiguous."""
    names = model_names(repository)
    if not names:
        raise ModelLoadError(
            f"no models in the repository {repository}: expected "
            f"{repository}/<model>/<version>/{MODEL_FILE_NAME} "
            "(run `make train-export` to create one)"
        )
    if wanted is not None:
        if wanted not in names:
            raise ModelLoadError(
                f"default model {wanted!r} is not in the repository {repository} "
                f"(models there: {', '.join(names)})"
            )
        return wanted
    if PREFERRED_DEFAULT_MODEL in names:
        return PREFERRED_DEFAULT_MODEL
    if len(names) == 1:
        return names[0]
    raise ModelLoadError(
        f"the repository {repository} holds {len(names)} models "
        f"({', '.join(names)}) and none is named {PREFERRED_DEFAULT_MODEL!r}: set "
        "--default-model (MNIST_SERVING_DEFAULT_MODEL) to the one a request without "
        "a model name means"
    )


def folder_fingerprint(repository: Path, name: str) -> object:
    """Cheap identity of a model folder: config text and each version file's stat."""
    model_dir = repository / name
    try:
        config_text = (model_dir / CONFIG_FILE_NAME).read_bytes()
    except OSError:
        config_text = b""
    return (
        config_text,
        tuple(
            (version, _file_key(model_dir / str(version) / MODEL_FILE_NAME))
            for version in list_versions(repository, name)
        ),
    )


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
