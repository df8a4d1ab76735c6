#!/usr/bin/env python3
"""The lock files of every environment `make` builds (docs/environments.md).

    python requirements/lock.py compile [uv option ...]   write every lock (`make lock`; needs uv)
    python requirements/lock.py check                     exit 1 naming each stale lock
    python requirements/lock.py export NAME --torch cpu   NAME's lock less PyPI torch's CUDA part

`serve-gpu` is `serve` with onnxruntime-gpu (and the CUDA and cuDNN runtime wheels of its
`cuda` and `cudnn` extras) in place of onnxruntime: the two install the same `onnxruntime`
package, so the lock leaves the project's onnxruntime requirement out (`drops`: uv gets it
as an override whose marker is never true) and takes onnxruntime-gpu from serve-gpu.in.

Each lock holds exact versions with the hashes of every file of them, for every platform
(`uv pip compile --universal`), so one lock serves Linux, macOS and the images. Its first
line is the digest of what it was made from (the requirement lists in pyproject.toml and
client/pyproject.toml, the .in files, pins.in and the pins of the lock it follows): a change
to any of them without `make lock` makes `check` (and tests/unit/test_locks.py) fail.
Stdlib only, except `check`'s range test, which uses `packaging` (in every lock).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK_DIR = ROOT / "requirements"
PINS = "requirements/pins.in"
PROJECTS = ("pyproject.toml", "client/pyproject.toml")
BUILD_TOOLS = "requirements/build.in"
# The oldest Python the project supports: the universal resolution covers it and newer ones.
PYTHON_VERSION = "3.11"
DIGEST_PREFIX = "# inputs-sha256: "
# PyPI's Linux torch wheel needs NVIDIA's CUDA runtime (nvidia-*, cuda-*) and triton; the CPU
# build from PyTorch's own index needs none of them (TORCH=cpu, the Makefile).
TORCH_PACKAGES = ("torch", "torchvision")
CUDA_ONLY = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")
REQUIREMENT_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")
NEVER = "sys_platform == 'never'"


@dataclass(frozen=True)
class Lock:
    """One environment's lock: requirements/<name>.txt, made from `sources` (pyproject files
    with `extras`, or .in files); `follows` names a lock whose versions this one keeps, so
    that the serving and training environments run what the tests ran."""

    name: str
    environment: str
    sources: tuple[str, ...]
    extras: tuple[str, ...] = ()
    follows: str | None = None
    drops: tuple[str, ...] = ()
    """Requirements of the sources this lock leaves out (replaced by one of its .in files)."""

    @property
    def path(self) -> Path:
        return LOCK_DIR / f"{self.name}.txt"


# In the order they are made: a lock comes after the one it follows.
LOCKS = (
    Lock(
        "dev",
        ".venv-train + test/lint tools, make bench",
        (*PROJECTS, BUILD_TOOLS),
        ("train", "dev"),
    ),
    Lock("train", ".venv-train (make train-export)", (*PROJECTS, BUILD_TOOLS), ("train",), "dev"),
    Lock("serve", ".venv (make serve), the images", (*PROJECTS, BUILD_TOOLS), (), "dev"),
    Lock(
        "serve-gpu",
        ".venv-gpu (make serve where an NVIDIA GPU is, or ORT=gpu), the GPU image",
        (*PROJECTS, BUILD_TOOLS, "requirements/serve-gpu.in"),
        (),
        "serve",
        drops=("onnxruntime",),
    ),
    Lock("deploy", ".venv-deploy (make test-deploy)", ("requirements/deploy.in", BUILD_TOOLS)),
    Lock("lock-tools", ".venv-lock (make lock)", ("requirements/lock-tools.in", BUILD_TOOLS)),
)
LOCKS_BY_NAME = {lock.name: lock for lock in LOCKS}


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a .in or lock file, without comments, options and hashes."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip().rstrip("\\").strip()
        if line and not line.startswith(("#", "-", "--")):
            lines.append(line)
    return lines


def project_requirements(source: str, extras: tuple[str, ...]) -> list[str]:
    project = tomllib.loads((ROOT / source).read_text())["project"]
    optional = project.get("optional-dependencies", {})
    found = list(project["dependencies"])
    for extra in extras:
        found += optional.get(extra, [])
    return found


def direct_requirements(lock: Lock) -> list[str]:
    """What the lock was asked to satisfy, as written in its sources."""
    found: list[str] = []
    for source in lock.sources:
        if source.endswith(".toml"):
            found += project_requirements(source, lock.extras)
        else:
            found += requirement_lines(ROOT / source)
    return [line for line in found if requirement_name(line) not in lock.drops]


def requirement_name(line: str) -> str:
    match = REQUIREMENT_NAME.match(line.strip())
    return canonical(match.group(1)) if match else ""


def inputs_digest(lock: Lock) -> str:
    digest = hashlib.sha256()
    parts = [f"lock {lock.name} python {PYTHON_VERSION} extras {lock.extras}"]
    parts += [f"drops {name}" for name in lock.drops]
    parts += [*lock.sources, *direct_requirements(lock)]
    parts += [f"pin {line}" for line in requirement_lines(ROOT / PINS)]
    if lock.follows:
        parts += [f"follows {line}" for line in requirement_lines(LOCKS_BY_NAME[lock.follows].path)]
    for part in parts:
        digest.update(part.encode() + b"\n")
    return digest.hexdigest()


def compile_locks(uv_options: list[str]) -> None:
    uv = shutil.which("uv")
    if uv is None:
        sys.exit("lock.py compile needs uv on the PATH (make lock installs it in .venv-lock)")
    for lock in LOCKS:
        command = [uv, "pip", "compile", "--quiet", *lock.sources, "--constraint", PINS]
        command += [option for extra in lock.extras for option in ("--extra", extra)]
        if lock.follows:
            command += ["--constraint", str(LOCKS_BY_NAME[lock.follows].path.relative_to(ROOT))]
        command += ["--generate-hashes", "--universal", "--python-version", PYTHON_VERSION]
        command += ["--custom-compile-command", "make lock", "--output-file", str(lock.path)]
        with tempfile.TemporaryDirectory() as scratch:
            if lock.drops:
                # A requirement overridden with a marker that is never true is left out.
                overrides = Path(scratch) / "drops.txt"
                overrides.write_text("".join(f"{name} ; {NEVER}\n" for name in lock.drops))
                command += ["--overrides", str(overrides)]
            subprocess.run([*command, *uv_options], cwd=ROOT, check=True)
        text = without_drops(lock.path.read_text(), lock.drops)
        body = [line for line in text.splitlines() if not line.startswith(DIGEST_PREFIX)]
        header = [f"{DIGEST_PREFIX}{inputs_digest(lock)}", f"# environment: {lock.environment}"]
        body = [line for line in body if not line.startswith("# environment: ")]
        lock.path.write_text("\n".join([*header, *body]) + "\n")
        print(f"{lock.path.relative_to(ROOT)}: {len(pinned_versions(lock.path))} packages")


def without_drops(text: str, drops: tuple[str, ...]) -> str:
    """uv's lock less what the never-true override left in it: the dropped packages' entries
    (kept with the marker), the marker where it was or-ed into another's, the override's
    temporary path."""
    if not drops:
        return text
    kept: list[str] = []
    dropping = False
    for line in text.splitlines():
        match = REQUIREMENT_NAME.match(line)
        if match:
            dropping = canonical(match.group(1)) in drops
        if dropping:
            continue
        if line.strip().startswith("#   --override"):
            line = f"{line.split('--override')[0]}--override (lock.py: drops {', '.join(drops)})"
        if "--overrides" in line:
            line = re.sub(r" --overrides \S+", "", line)
        kept.append(line.replace(f" or {NEVER}", "").replace(f"{NEVER} or ", ""))
    return "\n".join(kept) + "\n"


def pinned_versions(path: Path) -> dict[str, list[str]]:
    """name -> the versions the lock pins (two where a marker splits them, e.g. by Python)."""
    pins: dict[str, list[str]] = {}
    for line in requirement_lines(path):
        name, _, rest = line.partition("==")
        pins.setdefault(canonical(name), []).append(rest.split(";")[0].strip())
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower().split("[")[0].strip()


def stale_reasons(lock: Lock) -> list[str]:
    """Why `lock` no longer matches its sources; empty when it is current."""
    from packaging.requirements import Requirement  # the one non-stdlib import: check only

    if not lock.path.is_file():
        return [f"{lock.path.relative_to(ROOT)} is missing"]
    reasons = []
    first = lock.path.read_text().splitlines()[0]
    if first != f"{DIGEST_PREFIX}{inputs_digest(lock)}":
        reasons.append("its sources changed since it was made")
    pins = pinned_versions(lock.path)
    for line in direct_requirements(lock):
        requirement = Requirement(line)
        versions = pins.get(canonical(requirement.name))
        if not versions:
            reasons.append(f"{requirement.name} is required but not locked")
        elif not any(requirement.specifier.contains(v, prereleases=True) for v in versions):
            reasons.append(f"{requirement.name}=={versions} is outside {requirement.specifier}")
    return reasons


def check() -> int:
    failed = 0
    for lock in LOCKS:
        for reason in stale_reasons(lock):
            print(f"{lock.path.relative_to(ROOT)} is stale: {reason}; run `make lock`")
            failed = 1
    return failed


def export(lock: Lock, torch: str) -> str:
    """The lock's text, less torch, torchvision and their CUDA runtime when `torch` is "cpu"
    (the Makefile installs PyTorch's CPU build of the same versions first)."""
    text = lock.path.read_text()
    if torch != "cpu":
        return text
    kept: list[str] = []
    dropping = False
    for line in text.splitlines():
        match = REQUIREMENT_NAME.match(line)
        if match:
            name = canonical(match.group(1))
            dropping = name in TORCH_PACKAGES or bool(CUDA_ONLY.match(name))
        if not dropping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("compile", help="write every lock with uv (extra options go to uv)")
    commands.add_parser("check", help="exit 1 when a lock is stale against its sources")
    export_parser = commands.add_parser("export", help="print one lock for pip install -r")
    export_parser.add_argument("name", choices=sorted(LOCKS_BY_NAME))
    export_parser.add_argument("--torch", choices=("cpu", "pypi"), default="pypi")
    export_parser.add_argument("--versions-of", nargs="*", default=None, metavar="PACKAGE")
    args, rest = parser.parse_known_args()
    if args.command == "compile":
        compile_locks(rest)
        return check()
    if rest:
        parser.error(f"unexpected arguments {rest}")
    if args.command == "check":
        return check()
    lock = LOCKS_BY_NAME[args.name]
    if args.versions_of is not None:
        pins = pinned_versions(lock.path)
        print(" ".join(f"{name}=={pins[canonical(name)][0]}" for name in args.versions_of))
        return 0
    sys.stdout.write(export(lock, args.torch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
