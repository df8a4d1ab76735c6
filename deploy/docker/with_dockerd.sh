#!/usr/bin/env bash
# Run a command with a Docker daemon: the one already running if `docker info` answers,
# else Debian's docker.io (installed when missing) started here and stopped again when the
# command ends, also when it fails or is interrupted.
#
#   deploy/docker/with_dockerd.sh make docker
#
# Variables: DOCKER (docker), DOCKERD_LOG (build/docker/dockerd.log),
# DOCKERD_START_TIMEOUT_S (60), DOCKERD_STOP_TIMEOUT_S (30).
set -euo pipefail

docker=${DOCKER:-docker}
log=${DOCKERD_LOG:-build/docker/dockerd.log}
start_timeout_s=${DOCKERD_START_TIMEOUT_S:-60}
stop_timeout_s=${DOCKERD_STOP_TIMEOUT_S:-30}
sudo=""
if [ "$(id -u)" != 0 ]; then sudo=sudo; fi

if timeout 20 $docker info >/dev/null 2>&1; then
  echo "with_dockerd: using the Docker daemon that is already running"
  exec "$@"
fi

if ! command -v dockerd >/dev/null; then
  # The package's name is in requirements/debian.txt (group docker), with every other one.
  packages=$(awk '!/^#/ && $2 == "docker" {print $1}' "$(dirname "$0")/../../requirements/debian.txt")
  echo "with_dockerd: installing Debian's $packages"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $packages >/dev/null
  # Where systemd runs, the package starts its own daemon: use that one.
  if timeout 20 $docker info >/dev/null 2>&1; then
    echo "with_dockerd: using the Docker daemon the docker.io package started"
    exec "$@"
  fi
fi

mkdir -p "$(dirname "$log")"
pidfile=$(mktemp -u "${TMPDIR:-/tmp}/with_dockerd.XXXXXX.pid")
$sudo dockerd --pidfile "$pidfile" >"$log" 2>&1 &
dockerd_pid=$!

stop_dockerd() {
  local status=$?
  trap - EXIT INT TERM
  echo "with_dockerd: stopping the Docker daemon it started (pid $dockerd_pid)"
  $sudo kill -TERM "$dockerd_pid" 2>/dev/null || true
  local waited=0
  while kill -0 "$dockerd_pid" 2>/dev/null && [ "$waited" -lt "$stop_timeout_s" ]; do
    sleep 1
    waited=$((waited + 1))
  done
  if kill -0 "$dockerd_pid" 2>/dev/null; then
    echo "with_dockerd: dockerd did not stop in ${stop_timeout_s}s, killing it"
    $sudo kill -KILL "$dockerd_pid" 2>/dev/null || true
  fi
  exit "$status"
}
trap stop_dockerd EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

waited=0
until timeout 5 $docker info >/dev/null 2>&1; do
  if ! kill -0 "$dockerd_pid" 2>/dev/null || [ "$waited" -ge "$start_timeout_s" ]; then
    echo "with_dockerd: dockerd did not come up in ${start_timeout_s}s; its log:" >&2
    tail -20 "$log" >&2
    exit 1
  fi
  sleep 1
  waited=$((waited + 1))
done
echo "with_dockerd: started dockerd (pid $dockerd_pid, log $log)"
"$@"
