#!/usr/bin/env bash
# Build docker/Dockerfile with Docker when an engine answers, else with buildah (chroot isolation,
# overlay or vfs storage: no daemon, runs as root in a VM or a container). `make image` runs this.
#
#   docker/build.sh                         # CPU torch, tag $ANET_IMAGE (default below)
#   IMAGE_TORCH=cuda PUSH=1 ANET_IMAGE=registry.internal/anet:0.1.0 docker/build.sh
#
# Environment: ANET_IMAGE (name:tag), IMAGE_TORCH (cpu|cuda), ANET_ENGINE (docker|buildah),
# STORAGE_DRIVER (buildah: vfs where overlay mounts are refused, e.g. inside an unprivileged container),
# BASE (base image; buildah without one builds localhost/anet-base:bookworm with debootstrap),
# TORCH_INDEX_URL (where the CPU torch wheel comes from; buildah: the host's pip config by default),
# PUSH=1 (push, then write the registry digest). Writes .cache/image/image.json (engine, id,
# digest, size, build seconds, commit) and, after a push, .cache/image/image.ref (name@sha256:...),
# which `make pipeline-compile` pins the compiled tasks to.
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/versions.env
IMAGE=${ANET_IMAGE:-ghcr.io/anet-pipeline/anet:0.1.0}
FLAVOUR=${IMAGE_TORCH:-cpu}
OUT=.cache/image
mkdir -p "$OUT"

engine() {
  if [ -n "${ANET_ENGINE:-}" ]; then echo "$ANET_ENGINE"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker
  elif command -v buildah >/dev/null; then echo buildah
  else echo "no container engine: install Docker, or buildah (apt-get install buildah debootstrap)" >&2; exit 1
  fi
}

git_commit() {  # the commit the image is built from, +dirty when tracked files differ from it
  local head
  head=$(git rev-parse --verify HEAD 2>/dev/null) || { echo unknown; return; }
  if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then echo "$head+dirty"; else echo "$head"; fi
}

case "$FLAVOUR" in
  cpu) LOCK=docker/requirements-cpu.lock; TORCH_PIN="torch==${TORCH_VERSION}+cpu" ;;
  cuda) LOCK=docker/requirements-cuda.lock; TORCH_PIN="torch==${TORCH_VERSION}" ;;
  *) echo "IMAGE_TORCH must be cpu or cuda, not $FLAVOUR" >&2; exit 2 ;;
esac
ENGINE=$(engine)
COMMIT=$(git_commit)
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
args=(-f docker/Dockerfile -t "$IMAGE" --build-arg "LOCK=$LOCK" --build-arg "GIT_COMMIT=$COMMIT"
      --build-arg "BUILD_DATE=$DATE" --build-arg "IMAGE_NAME=$IMAGE")
[ -n "${BASE:-}" ] && args+=(--build-arg "BASE=$BASE")

build_docker() {
  local torch=(--build-arg "TORCH_SPEC=$TORCH_PIN")
  [ "$FLAVOUR" = cpu ] && torch+=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
  docker build "${args[@]}" "${torch[@]}" --iidfile "$OUT/image-id" .
}

build_buildah() {
  # buildah ignores STORAGE_DRIVER: pass it as a flag (default: overlay where the kernel allows, else vfs)
  local buildah=(buildah ${STORAGE_DRIVER:+--storage-driver "$STORAGE_DRIVER"})
  if [ -z "${BASE:-}" ]; then
    docker/base-debian.sh "localhost/anet-base:$DEBIAN_SUITE"
    args+=(--build-arg "BASE=localhost/anet-base:$DEBIAN_SUITE")
  fi
  local extra=() ca wheels="$OUT/wheels"
  if [ "$FLAVOUR" = cpu ]; then  # the CPU wheel: fetched here by the host's pip, mounted read-only
    mkdir -p "$wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
      --platform manylinux_2_28_x86_64 --dest "$wheels" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
      "$TORCH_PIN" || { echo "no $TORCH_PIN wheel: set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2; exit 1; }
    extra+=(--volume "$PWD/$wheels:/run/wheels:ro"
            --build-arg "TORCH_SPEC=/run/wheels/$(basename "$(ls "$wheels"/torch-"$TORCH_VERSION"+cpu-*.whl)")")
  else
    extra+=(--build-arg "TORCH_SPEC=$TORCH_PIN")
  fi
  ca=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
  if [ -n "$ca" ] && [ -f "$ca" ]; then  # this machine's CA bundle for TLS to the index
    extra+=(--volume "$ca:/run/host-ca.pem:ro" --build-arg PIP_CERT=/run/host-ca.pem)
  fi
  "${buildah[@]}" bud --layers --isolation "${BUILDAH_ISOLATION:-chroot}" "${args[@]}" "${extra[@]}" --iidfile "$OUT/image-id" .
}

start=$(date +%s)
"build_$ENGINE"
seconds=$(( $(date +%s) - start ))
ENGINE="$ENGINE" IMAGE="$IMAGE" FLAVOUR="$FLAVOUR" COMMIT="$COMMIT" DATE="$DATE" SECONDS_TAKEN="$seconds" \
  PUSH="${PUSH:-}" python3 docker/image_record.py "$OUT"
