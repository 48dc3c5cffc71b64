#!/usr/bin/env bash
# A Debian base image with Python 3.11 for buildah, made with debootstrap from Debian's package
# mirror: for machines that reach Debian and PyPI but no container registry (no python:3.11-slim).
#
#   docker/base-debian.sh [image-name]     # default localhost/anet-base:bookworm; reused if present
#
# Unlike python:3.11-slim it has no `python` command and a PEP 668 marker; the Dockerfile does not
# care: it installs everything into its own venv (/opt/venv).
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/versions.env
NAME=${1:-localhost/anet-base:$DEBIAN_SUITE}
# buildah ignores STORAGE_DRIVER: pass it as a flag (default: overlay where the kernel allows, else vfs)
buildah=(buildah ${STORAGE_DRIVER:+--storage-driver "$STORAGE_DRIVER"})
if "${buildah[@]}" inspect --type image "$NAME" >/dev/null 2>&1; then
  echo "base image $NAME present"; exit 0
fi
command -v debootstrap >/dev/null || { echo "need debootstrap (apt-get install debootstrap)" >&2; exit 1; }
rootfs=$(mktemp -d /var/tmp/anet-rootfs.XXXXXX)
container=""
cleanup() { [ -n "$container" ] && "${buildah[@]}" rm "$container" >/dev/null 2>&1; rm -rf "$rootfs"; }
trap cleanup EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
container=$("${buildah[@]}" from scratch)
mnt=$("${buildah[@]}" mount "$container")
cp -a "$rootfs"/. "$mnt"/
"${buildah[@]}" umount "$container" >/dev/null
"${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env LANG=C.UTF-8 --cmd /bin/bash "$container"
"${buildah[@]}" commit -q "$container" "$NAME" >/dev/null
echo "base image $NAME built from Debian $DEBIAN_SUITE"
