"""A small real gRPC server that plays a model repository with Triton's semantics.

It serves Triton's repository RPCs (RepositoryIndex, RepositoryModelLoad/Unload), the V2
ModelMetadata RPC and the Classify API from an in-memory table of models, so the SDK's
repository calls and per-call model choice can be tested without the real server:
index states "READY" / "UNAVAILABLE" (reason "unloaded"), loading an unknown model fails
NOT_FOUND, model control "none" refuses load/unload with FAILED_PRECONDITION, and Classify
on a model that is not loaded fails NOT_FOUND. It records the (model, version) of every
Classify request it gets.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from mnist_serving_proto import (
    classifier_pb2,
    classifier_pb2_grpc,
    open_inference_pb2,
    open_inference_pb2_grpc,
)
from mnist_serving_training.data import FASHION_MNIST_LABELS as FASHION_LABELS

SERVER_THREADS = 4
STOP_GRACE_S = 1.0
LOOPBACK = "127.0.0.1"
DEFAULT_MODEL = "mnist"
NUM_CLASSES = 10


@dataclass
class FakeModel:
    versions: tuple[str, ...]
    labels: tuple[str, ...]
    loaded: bool


def default_models() -> dict[str, FakeModel]:
    return {
        "mnist": FakeModel(("1", "2"), tuple(str(d) for d in range(NUM_CLASSES)), loaded=True),
        "fashion": FakeModel(("1",), FASHION_LABELS, loaded=False),
    }


@dataclass
class FakeRepository:
    models: dict[str, FakeModel] = field(default_factory=default_models)
    control_mode: str = "explicit"
    # (model_name, model_version) of every Classify request received.
    classify_targets: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class RepositoryServicer(open_inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: FakeRepository) -> None:
        self.repository = repository

    def RepositoryIndex(  # noqa: N802 - the gRPC method's name
        self, request: open_inference_pb2.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> open_inference_pb2.RepositoryIndexResponse:
        entry = open_inference_pb2.RepositoryIndexResponse.ModelIndex
        response = open_inference_pb2.RepositoryIndexResponse()
        with self.repository.lock:
            for name, model in sorted(self.repository.models.items()):
                if model.loaded:
                    response.models.extend(
                        entry(name=name, version=v, state="READY") for v in model.versions
                    )
                elif not request.ready:
                    response.models.append(entry(name=name, state="UNAVAILABLE", reason="unloaded"))
        return response

    def _switch(self, name: str, loaded: bool, context: grpc.ServicerContext) -> None:
        if self.repository.control_mode == "none":
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "explicit model load / unload is not allowed: --model-control-mode none",
            )
        with self.repository.lock:
            model = self.repository.models.get(name)
            if model is None:
                context.abort(grpc.StatusCode.NOT_FOUND, f"no model {name!r} in the repository")
            model.loaded = loaded

    def RepositoryModelLoad(  # noqa: N802 - the gRPC method's name
        self,
        request: open_inference_pb2.RepositoryModelLoadRequest,
        context: grpc.ServicerContext,
    ) -> open_inference_pb2.RepositoryModelLoadResponse:
        self._switch(request.model_name, True, context)
        return open_inference_pb2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(  # noqa: N802 - the gRPC method's name
        self,
        request: open_inference_pb2.RepositoryModelUnloadRequest,
        context: grpc.ServicerContext,
    ) -> open_inference_pb2.RepositoryModelUnloadResponse:
        self._switch(request.model_name, False, context)
        return open_inference_pb2.RepositoryModelUnloadResponse()

    def ModelMetadata(  # noqa: N802 - the gRPC method's name
        self, request: open_inference_pb2.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> open_inference_pb2.ModelMetadataResponse:
        model = loaded_model(self.repository, request.name, request.version, context)
        return open_inference_pb2.ModelMetadataResponse(
            name=request.name, versions=list(model.versions), platform="onnxruntime_onnx"
        )


def loaded_model(
    repository: FakeRepository, name: str, version: str, context: grpc.ServicerContext
) -> FakeModel:
    with repository.lock:
        model = repository.models.get(name)
    if model is None or not model.loaded or (version and version not in model.versions):
        context.abort(grpc.StatusCode.NOT_FOUND, f"model {name!r} version {version!r} not ready")
    return model


class NamingClassifier(classifier_pb2_grpc.ClassifierServicer):
    """Classify: label = first pixel byte % 10, named from the model's labels."""

    def __init__(self, repository: FakeRepository) -> None:
        self.repository = repository

    def _reply(
        self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        with self.repository.lock:
            self.repository.classify_targets.append((request.model_name, request.model_version))
        name = request.model_name or DEFAULT_MODEL
        model = loaded_model(self.repository, name, request.model_version, context)
        version = request.model_version or model.versions[-1]
        predictions = []
        for image in request.images:
            label = (image.pixels or image.encoded)[0] % NUM_CLASSES
            probabilities = [0.0] * NUM_CLASSES
            probabilities[label] = 1.0
            predictions.append(
                classifier_pb2.Prediction(
                    label=label,
                    probability=1.0,
                    probabilities=probabilities,
                    class_name=model.labels[label],
                )
            )
        return classifier_pb2.ClassifyResponse(
            predictions=predictions,
            model_name=name,
            model_version=version,
            request_id=request.request_id,
        )

    def Classify(  # noqa: N802 - the gRPC method's name
        self, request: classifier_pb2.ClassifyRequest, context: grpc.ServicerContext
    ) -> classifier_pb2.ClassifyResponse:
        return self._reply(request, context)

    def ClassifyStream(  # noqa: N802 - the gRPC method's name
        self,
        request_iterator: Iterator[classifier_pb2.ClassifyRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[classifier_pb2.ClassifyResponse]:
        for request in request_iterator:
            yield self._reply(request, context)


class RepositoryServer:
    """A running fake repository server; `target` to connect, `repository` to inspect."""

    def __init__(self, control_mode: str = "explicit") -> None:
        self.repository = FakeRepository(control_mode=control_mode)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS))
        # The generated base class answers UNIMPLEMENTED for the RPCs not played here; its
        # type stubs declare them abstract.
        servicer = RepositoryServicer(self.repository)  # type: ignore[abstract]
        open_inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, self._server)
        classifier_pb2_grpc.add_ClassifierServicer_to_server(
            NamingClassifier(self.repository), self._server
        )
        self.port = self._server.add_insecure_port(f"{LOOPBACK}:0")
        self._server.start()

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def stop(self) -> None:
        self._server.stop(STOP_GRACE_S).wait()
