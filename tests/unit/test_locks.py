"""Every environment `make` builds installs from a current lock (requirements/*.txt).

A lock is stale when what it was made from changed without `make lock`: a dependency added
to pyproject.toml, a range moved, an .in file or pins.in edited. These tests run the same
check as `make lock-check`, and prove it catches a dependency added without relocking.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO_ROOT, load_script


@pytest.fixture(scope="module")
def lock_module() -> ModuleType:
    return load_script("requirements_lock", REPO_ROOT / "requirements" / "lock.py")


def test_every_lock_is_current(lock_module: ModuleType) -> None:
    stale = {lock.name: lock_module.stale_reasons(lock) for lock in lock_module.LOCKS}
    assert stale == {lock.name: [] for lock in lock_module.LOCKS}, "run `make lock` and commit"


@pytest.fixture
def copied_tree(tmp_path: Path, lock_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The lock's sources and locks copied to tmp_path, which lock.py then reads instead."""
    (tmp_path / "client").mkdir()
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(REPO_ROOT / "client" / "pyproject.toml", tmp_path / "client" / "pyproject.toml")
    shutil.copytree(REPO_ROOT / "requirements", tmp_path / "requirements")
    monkeypatch.setattr(lock_module, "ROOT", tmp_path)
    monkeypatch.setattr(lock_module, "LOCK_DIR", tmp_path / "requirements")
    return tmp_path


def test_a_dependency_added_without_relocking_makes_the_locks_stale(
    copied_tree: Path, lock_module: ModuleType
) -> None:
    assert lock_module.check() == 0
    pyproject = copied_tree / "pyproject.toml"
    text = pyproject.read_text()
    assert '    "numpy>=1.26",\n' in text
    pyproject.write_text(
        text.replace('    "numpy>=1.26",\n', '    "numpy>=1.26",\n    "left-pad>=1",\n', 1)
    )
    serve = lock_module.LOCKS_BY_NAME["serve"]
    assert lock_module.stale_reasons(serve) == [
        "its sources changed since it was made",
        "left-pad is required but not locked",
    ]
    assert lock_module.check() == 1


def test_a_range_the_locked_version_leaves_is_named(
    copied_tree: Path, lock_module: ModuleType
) -> None:
    client = copied_tree / "client" / "pyproject.toml"
    client.write_text(client.read_text().replace('"numpy>=1.26"', '"numpy<1.26"'))
    reasons = lock_module.stale_reasons(lock_module.LOCKS_BY_NAME["serve"])
    assert reasons[0] == "its sources changed since it was made"
    assert reasons[1].startswith("numpy==")
    assert reasons[1].endswith("is outside <1.26")


def test_a_pin_changed_by_hand_makes_the_locks_that_follow_it_stale(
    copied_tree: Path, lock_module: ModuleType
) -> None:
    dev = copied_tree / "requirements" / "dev.txt"
    text, edits = re.subn(r"\norjson==[^ ]+", "\norjson==3.10.1", dev.read_text(), count=1)
    assert edits == 1
    dev.write_text(text)
    stale = {lock.name for lock in lock_module.LOCKS if lock_module.stale_reasons(lock)}
    assert stale == {"serve", "train"}


def test_the_cpu_export_drops_pypi_torch_and_its_cuda_runtime_only(lock_module: ModuleType) -> None:
    dev = lock_module.LOCKS_BY_NAME["dev"]
    full = set(lock_module.pinned_versions(dev.path))
    exported = REPO_ROOT / "requirements" / "dev.txt"
    cpu_text = lock_module.export(dev, "cpu")
    cpu = {
        lock_module.canonical(line.split("==")[0])
        for line in cpu_text.splitlines()
        if line[:1].isalnum()
    }
    dropped = full - cpu
    assert {"torch", "torchvision", "triton"} <= dropped
    assert any(name.startswith("nvidia-") for name in dropped)
    assert all(lock_module.CUDA_ONLY.match(n) or n in ("torch", "torchvision") for n in dropped)
    # What the CPU build itself needs stays, hashes and all.
    assert {"sympy", "filelock", "networkx", "jinja2", "fsspec", "numpy"} <= cpu
    assert "--hash=sha256:" in cpu_text
    assert lock_module.export(dev, "pypi") == exported.read_text()


def test_every_environment_the_makefile_builds_installs_from_its_lock() -> None:
    """No `pip install` of a bare name or range in the Makefile or its fragments: each
    environment gets its lock (--require-hashes), our own packages (--no-deps), or the CPU
    build of the lock's torch versions."""
    recipes = [REPO_ROOT / "Makefile", *sorted((REPO_ROOT / "mk").glob("*.mk"))]
    installs = [
        line.strip()
        for path in recipes
        for line in path.read_text().splitlines()
        if "pip install" in line and not line.lstrip().startswith("#")
    ]
    assert installs, "the Makefile installs nothing?"
    for line in installs:
        assert "--no-deps" in line, line


def test_every_debian_package_line_names_a_known_group() -> None:
    """requirements/debian.txt as the Makefile and deploy/docker/*.sh read it (awk, comments
    skipped): one package a line, each in a group that something installs."""
    lines = (REPO_ROOT / "requirements" / "debian.txt").read_text().splitlines()
    entries = [line.split()[:2] for line in lines if line.strip() and not line.startswith("#")]
    groups = {group for _, group in entries}
    assert groups == {"test", "bench", "docker", "docker-base"}
    packages = [package for package, _ in entries]
    assert len(packages) == len(set(packages))
    assert all(package[0].isalnum() for package in packages)


def test_the_gpu_lock_is_the_serving_lock_with_onnxruntime_gpu(lock_module: ModuleType) -> None:
    """requirements/serve-gpu.txt (`make serve` where an NVIDIA GPU is): onnxruntime-gpu
    1.31.x, the CUDA 13 build, with its CUDA and cuDNN runtime wheels, and NOT onnxruntime,
    which installs the same package; every other package at the serving lock's version."""
    gpu = lock_module.pinned_versions(lock_module.LOCKS_BY_NAME["serve-gpu"].path)
    serve = lock_module.pinned_versions(lock_module.LOCKS_BY_NAME["serve"].path)
    assert "onnxruntime" not in gpu
    (version,) = gpu["onnxruntime-gpu"]
    assert version.startswith("1.31.")
    assert {"nvidia-cuda-runtime", "nvidia-cudnn-cu13", "nvidia-cublas"} <= set(gpu)
    assert not any("cu12" in name for name in gpu)
    cuda_wheels = {name for name in gpu if lock_module.CUDA_ONLY.match(name)}
    assert set(gpu) - cuda_wheels - {"onnxruntime-gpu"} == set(serve) - {"onnxruntime"}
    assert all(gpu[name] == serve[name] for name in set(serve) - {"onnxruntime"})
    text = lock_module.LOCKS_BY_NAME["serve-gpu"].path.read_text()
    assert "never" not in text  # the drop left nothing behind
    assert "/tmp" not in text
    assert "--hash=sha256:" in text


def test_the_gpu_lock_goes_stale_with_the_serving_lock_or_its_in_file(
    copied_tree: Path, lock_module: ModuleType
) -> None:
    gpu = lock_module.LOCKS_BY_NAME["serve-gpu"]
    assert lock_module.stale_reasons(gpu) == []
    serve = copied_tree / "requirements" / "serve.txt"
    text, edits = re.subn(r"\norjson==[^ ]+", "\norjson==3.10.1", serve.read_text(), count=1)
    assert edits == 1
    serve.write_text(text)
    assert lock_module.stale_reasons(gpu) == ["its sources changed since it was made"]
    serve.write_text(text.replace("\norjson==3.10.1", "\norjson==3.13.0"))
    gpu_in = copied_tree / "requirements" / "serve-gpu.in"
    gpu_in.write_text(gpu_in.read_text().replace(">=1.31,<1.32", ">=1.32"))
    assert lock_module.stale_reasons(gpu) == [
        "its sources changed since it was made",
        "onnxruntime-gpu==['1.31.1'] is outside >=1.32",
    ]


def test_dropping_a_requirement_removes_what_uv_kept_of_it(lock_module: ModuleType) -> None:
    uv_wrote = "\n".join(
        [
            "#    make lock",
            "flatbuffers==25.12.19 ; sys_platform == 'linux' or sys_platform == 'never' \\",
            "    --hash=sha256:aa",
            "    # via",
            "    #   onnxruntime",
            "onnxruntime==1.32.0 ; sys_platform == 'never' \\",
            "    --hash=sha256:bb",
            "    # via",
            "    #   --override /tmp/tmpabc/drops.txt",
            "    #   mnist-serving (pyproject.toml)",
            "onnxruntime-gpu==1.31.1 ; sys_platform == 'linux' \\",
            "    --hash=sha256:cc",
        ]
    )
    assert lock_module.without_drops(uv_wrote, ("onnxruntime",)).splitlines() == [
        "#    make lock",
        "flatbuffers==25.12.19 ; sys_platform == 'linux' \\",
        "    --hash=sha256:aa",
        "    # via",
        "    #   onnxruntime",
        "onnxruntime-gpu==1.31.1 ; sys_platform == 'linux' \\",
        "    --hash=sha256:cc",
    ]
    assert lock_module.without_drops(uv_wrote, ()) == uv_wrote
