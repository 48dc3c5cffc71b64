#!/usr/bin/env bash
# Regenerate the fully pinned, hashed locks of the runtime dependencies (pyproject.toml, with the
# `cluster` extra: PostgreSQL and Redis drivers) for
# Linux x86_64 / Python 3.11, one per torch flavour. torch itself is left out of both: the
# Dockerfile installs it from TORCH_SPEC, so the CPU wheel and the CUDA wheel share one recipe.
#
#   docker/lock.sh            # needs uv on PATH, or installs it into a throwaway venv (PyPI)
#
# cpu : torch==${TORCH_VERSION}+cpu (from the PyTorch CPU index or a local wheel folder, see
#       TORCH_FIND_LINKS) and its pure-Python deps;
# cuda: torch==${TORCH_VERSION} from PyPI with its nvidia-* and triton wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
source docker/versions.env
UV=${UV:-$(command -v uv || true)}
if [ -z "$UV" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m venv "$tmp/venv" && "$tmp/venv/bin/pip" install -q uv
  UV="$tmp/venv/bin/uv"
fi
# the CPU wheel: a local folder (this machine's pip find-links) or the PyTorch CPU index
TORCH_FIND_LINKS=${TORCH_FIND_LINKS:-$(pip config get global.find-links 2>/dev/null || true)}
cpu_source=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
[ -n "$TORCH_FIND_LINKS" ] && cpu_source=(--find-links "$TORCH_FIND_LINKS")

compile() {  # flavour torch-pin extra-args...
  local flavour=$1 pin=$2 constraints
  shift 2
  constraints=$(mktemp)
  echo "torch==$pin" >"$constraints"
  "$UV" pip compile pyproject.toml --quiet --python-version "$PYTHON_VERSION" \
    --python-platform "$LOCK_PLATFORM" --constraint "$constraints" --no-emit-package torch \
    --extra cluster --generate-hashes --no-header "$@" -o "docker/requirements-$flavour.lock.tmp"
  rm -f "$constraints"
  { echo "# anet-pipeline runtime lock ($flavour): pyproject.toml resolved for Linux x86_64 / Python $PYTHON_VERSION"
    echo "# with torch==$pin, which is NOT listed here (the Dockerfile installs TORCH_SPEC first)."
    echo "# Regenerate with docker/lock.sh; install with: pip install --no-deps --require-hashes -r <this file>"
    cat "docker/requirements-$flavour.lock.tmp"; } >"docker/requirements-$flavour.lock"
  rm -f "docker/requirements-$flavour.lock.tmp"
  echo "docker/requirements-$flavour.lock: $(grep -c '^[a-z0-9]' "docker/requirements-$flavour.lock") packages"
}
compile cpu "${TORCH_VERSION}+cpu" "${cpu_source[@]}"
compile cuda "${TORCH_VERSION}"
