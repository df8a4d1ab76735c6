"""The committed stubs in client/mnist_serving_proto are exactly what `make proto` makes."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from tests.conftest import REPO_ROOT, load_script

COMMITTED_DIR = REPO_ROOT / "client" / "mnist_serving_proto"


def _load_generator() -> ModuleType:
    return load_script("proto_generate", REPO_ROOT / "proto" / "generate.py")


def test_committed_stubs_match_proto_sources(tmp_path: Path) -> None:
    generator = _load_generator()
    fresh = {p.name: p.read_bytes() for p in generator.generate(tmp_path)}
    committed = {p.name: p.read_bytes() for p in COMMITTED_DIR.iterdir() if "_pb2" in p.name}
    assert fresh, "generator produced nothing"
    assert sorted(committed) == sorted(fresh), "stub files differ from proto/: run `make proto`"
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale generated stubs {stale}: run `make proto` and commit the result"


def test_every_proto_source_has_stubs() -> None:
    for proto in (REPO_ROOT / "proto").glob("*.proto"):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert (COMMITTED_DIR / f"{proto.stem}{suffix}").is_file(), f"{proto.stem}{suffix}"
