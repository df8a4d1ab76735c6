#!/usr/bin/env bash
# Build a Debian base image for deploy/docker/Dockerfile without any container registry:
# debootstrap --variant=minbase of this machine's Debian release (bookworm: python3 3.11),
# from the mirror apt on this machine uses, with that release's security and point-release
# updates applied, then `docker import`. Does nothing when the image already exists.
#
#   deploy/docker/build_base.sh mnist-serving-base:bookworm
#
# Variables: DOCKER (docker), DEBIAN_SUITE (this machine's VERSION_CODENAME),
# DEBIAN_MIRROR (read from apt's sources by deploy/docker/debian_mirror.py).
# Needs root (debootstrap); installs Debian's debootstrap when it is missing.
set -euo pipefail

image=${1:?usage: build_base.sh IMAGE:TAG}
docker=${DOCKER:-docker}
here=$(cd "$(dirname "$0")" && pwd)
# python3 + python3-venv (ensurepip) to build the venv; tini as PID 1 (signals, zombies);
# passwd for useradd/groupadd in the Dockerfile.
packages=python3,python3-venv,tini,passwd

if $docker image inspect "$image" >/dev/null 2>&1; then
  echo "base image $image exists (docker rmi $image to rebuild)"
  exit 0
fi

# shellcheck disable=SC1091
suite=${DEBIAN_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
mirror=${DEBIAN_MIRROR:-$(python3 "$here/debian_mirror.py" "$suite")}
if ! command -v debootstrap >/dev/null; then
  # Named in requirements/debian.txt (group docker-base), with every other host package.
  host_packages=$(awk '!/^#/ && $2 == "docker-base" {print $1}' "$here/../../requirements/debian.txt")
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $host_packages >/dev/null
fi

rootfs=$(mktemp -d "${TMPDIR:-/tmp}/mnist-serving-base.XXXXXX")
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
echo "debootstrap $suite from $mirror (minbase + $packages)"
debootstrap --variant=minbase --include="$packages" "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
  || { tail -30 "$rootfs.log"; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# Security and point-release updates, from the same machine's sources; then no apt
# sources, lists or caches are left in the image.
sources="deb $mirror $suite main"
for extra in "$suite-updates" "$suite-security"; do
  if extra_mirror=$(python3 "$here/debian_mirror.py" "$extra" 2>/dev/null); then
    sources+=$'\n'"deb $extra_mirror $extra main"
  fi
done
printf '%s\n' "$sources" >"$rootfs/etc/apt/sources.list"
apt_get=(chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o APT::Sandbox::User=root)
{ "${apt_get[@]}" update && "${apt_get[@]}" upgrade -y && "${apt_get[@]}" clean; } >"$rootfs.log" 2>&1 \
  || { tail -30 "$rootfs.log"; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/etc/apt/sources.list "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* \
  "$rootfs"/var/log/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/locale/* \
  "$rootfs"/tmp/* "$rootfs"/root/.cache
: >"$rootfs/etc/machine-id"

tar --numeric-owner -C "$rootfs" -c . | $docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --message "debootstrap --variant=minbase $suite + $packages" \
  - "$image"
echo "built base image $image ($($docker image inspect -f '{{.Size}}' "$image") bytes)"
