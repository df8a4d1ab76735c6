"""Memory returns after unload: 20 load/unload cycles of a model through the repository RPCs
on a real server process leave its RSS (and thread count) where the first cycle left them.

RSS is read from /proc/<pid>/status, always at the same point of a cycle (model loaded and
answered one request), so what is compared is like with like.

What one ONNX Runtime session costs is measured in the same process first, by loading
models that were never loaded before (so no freed memory is reused): measured on the
session's MNIST CNN (a 0.9 MB file, warmed up with a batch of 64), about 11.5 MiB of RSS per
session, while RSS over 20 cycles moved within ~2 MiB. A leak of one session per cycle
would grow RSS by ~20 sessions; the test allows 2.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from mnist_serving_proto import open_inference_pb2 as pb
from mnist_serving_proto import open_inference_pb2_grpc as pb_grpc
from tests.repository_models import add_version
from tests.support.server_process import ServerProcess, start_server_process

CYCLES = 20
CYCLED_MODEL = "cycled"
PROBE_MODELS = 4
"""Models loaded once to measure what one session costs."""
ALLOWED_GROWTH_SESSIONS = 2.0
"""RSS growth over all cycles, in sessions' worth; a leak of one per cycle gives ~CYCLES."""
MIN_SESSION_COST_KIB = 1024
"""Below this the measurement could not tell a leaked session from noise."""
CALL_TIMEOUT_S = 30.0
TEST_LIMIT_S = 240.0
IMAGES_PER_CALL = 4


def status_of(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, thread count) from /proc/<pid>/status."""
    fields: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


def infer_request(model: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    request.inputs.add(name="pixels", datatype="UINT8", shape=[IMAGES_PER_CALL, 1, 28, 28])
    pixels = np.arange(IMAGES_PER_CALL * 28 * 28, dtype=np.int64) % 256
    request.raw_input_contents.append(pixels.astype(np.uint8).tobytes())
    return request


@pytest.fixture
def server(tmp_path: Path, session_model: Path) -> Iterator[tuple[ServerProcess, Path]]:
    repository = tmp_path / "repository"
    add_version(session_model, repository, "mnist", 1)
    add_version(session_model, repository, CYCLED_MODEL, 1)
    with start_server_process(repository, "--drain-delay-s", "0") as process:
        yield process, repository
        exit_code = process.stop()
    assert exit_code == 0, process.output()[-2000:]


def test_rss_is_bounded_over_20_load_unload_cycles(
    server: tuple[ServerProcess, Path], session_model: Path
) -> None:
    process, repository = server
    started = time.monotonic()
    with grpc.insecure_channel(process.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def load(name: str) -> None:
            stub.RepositoryModelLoad(
                pb.RepositoryModelLoadRequest(model_name=name), timeout=CALL_TIMEOUT_S
            )

        def unload(name: str) -> None:
            stub.RepositoryModelUnload(
                pb.RepositoryModelUnloadRequest(model_name=name), timeout=CALL_TIMEOUT_S
            )

        def answer(name: str) -> str:
            response = stub.ModelInfer(infer_request(name), timeout=CALL_TIMEOUT_S)
            assert response.model_name == name
            return str(response.model_version)

        answer("mnist")
        answer(CYCLED_MODEL)

        # What one session costs: models added after start, loaded for the first time.
        for index in range(PROBE_MODELS):
            add_version(session_model, repository, f"probe{index}", 1)
        before_probes, _ = status_of(process.pid)
        for index in range(PROBE_MODELS):
            load(f"probe{index}")
            answer(f"probe{index}")
        after_probes, _ = status_of(process.pid)
        session_kib = (after_probes - before_probes) / PROBE_MODELS
        assert session_kib >= MIN_SESSION_COST_KIB, (before_probes, after_probes)

        def cycle() -> None:
            unload(CYCLED_MODEL)
            with pytest.raises(grpc.RpcError) as unloaded:
                answer(CYCLED_MODEL)
            assert unloaded.value.code() is grpc.StatusCode.NOT_FOUND
            load(CYCLED_MODEL)
            assert answer(CYCLED_MODEL) == "1"

        cycle()  # warm-up: whatever the first cycle allocates for good
        rss_after_warm_up, threads_after_warm_up = status_of(process.pid)
        samples = []
        for _ in range(CYCLES):
            assert time.monotonic() - started < TEST_LIMIT_S
            cycle()
            samples.append(status_of(process.pid))
        rss_at_end, threads_at_end = samples[-1]
        ready_index = stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))

    growth_kib = rss_at_end - rss_after_warm_up
    allowed_kib = ALLOWED_GROWTH_SESSIONS * session_kib
    assert growth_kib < allowed_kib, (
        f"RSS grew {growth_kib} KiB over {CYCLES} cycles (one session is {session_kib:.0f} "
        f"KiB; allowed {allowed_kib:.0f}); per cycle: {[rss for rss, _ in samples]}"
    )
    # A retired version's batcher worker and ONNX Runtime pool threads must end too.
    assert threads_at_end <= threads_after_warm_up, samples
    assert sorted((m.name, m.state) for m in ready_index.models) == sorted(
        [("mnist", "READY"), (CYCLED_MODEL, "READY")]
        + [(f"probe{i}", "READY") for i in range(PROBE_MODELS)]
    )
