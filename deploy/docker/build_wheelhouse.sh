#!/usr/bin/env bash
# Build the wheelhouse an image installs from with `pip install --no-index`: pip runs here,
# on the host, with the host's trust store and index settings, so nothing of either goes
# into the image. Wheels of ./client and . plus every dependency, for the image's Python.
#
#   deploy/docker/build_wheelhouse.sh OUT_DIR PYTHON_VERSION GLIBC_MINOR [EXTRA_REQUIREMENT...]
#   e.g. build_wheelhouse.sh build/docker/wheelhouse-cpu 3.11 36          (Debian bookworm)
#        LOCK=requirements/serve-gpu.txt build_wheelhouse.sh build/docker/wheelhouse-gpu 3.12 39
#
# Variables: PYTHON (the host Python whose pip runs; default python3), LOCK (the serving
# lock, requirements/serve.txt, or serve-gpu.txt for the GPU image: its exact files,
# hash-checked). Extra requirements, if any, come without their dependencies.
set -euo pipefail

out=${1:?usage: build_wheelhouse.sh OUT_DIR PYTHON_VERSION GLIBC_MINOR [REQUIREMENT...]}
python_version=${2:?python version, e.g. 3.11}
glibc_minor=${3:?glibc minor version of the image, e.g. 36 for 2.36}
shift 3
python=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/../.." && pwd)

rm -rf "$out" && mkdir -p "$out"
# setuptools builds in the source tree: stale build/lib output could leak into the wheels.
rm -rf "$root/build/lib" "$root/build/bdist."* "$root/client/build"
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$root/client" "$root"

# manylinux wheels any glibc up to the image's can load; binaries only, for that Python.
platforms=(--platform manylinux2014_x86_64)
for minor in $(seq 17 "$glibc_minor"); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
lock=${LOCK:-$root/requirements/serve.txt}
download=("$python" -m pip download --quiet --dest "$out" --only-binary=:all: --no-deps
  --python-version "$python_version" --implementation cp "${platforms[@]}")
"${download[@]}" --require-hashes -r "$lock"
if [ "$#" -gt 0 ]; then "${download[@]}" "$@"; fi
echo "wheelhouse $out: $(find "$out" -name '*.whl' | wc -l) wheels for CPython $python_version"
