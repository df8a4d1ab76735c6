"""Generate the Python stubs for every .proto file in this folder.

`make proto` runs this; tests/unit/test_proto_stubs.py runs it into a temporary folder
and fails when the committed stubs differ. The stubs live in the client distribution as
the package `mnist_serving_proto` (protoc's virtual path maps this folder onto it), so
the client installs alone and the server imports the very same modules.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PYTHON_PACKAGE = "mnist_serving_proto"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write `<out_dir>/mnist_serving_proto/*_pb2*.py[i]`; return the files written."""
    from grpc_tools import protoc  # the pinned generator (grpcio-tools 1.81.x)

    # protoc finds the mypy-protobuf plugins (protoc-gen-mypy*) on PATH, beside this Python.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    package_dir = out_dir / PYTHON_PACKAGE
    package_dir.mkdir(parents=True, exist_ok=True)
    wkt_include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PYTHON_PACKAGE}={PROTO_DIR}",
        f"--proto_path={wkt_include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(f"{PYTHON_PACKAGE}/{path.name}" for path in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return sorted(p for p in package_dir.iterdir() if "_pb2" in p.name)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_DIR.parent / "client"
    for written in generate(target):
        print(written)
