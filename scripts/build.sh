#!/usr/bin/env bash
# Configures and builds longattn (Release). CUDA is built when nvcc is found (also at
# /usr/local/cuda/bin when that is not on PATH), for CMAKE_CUDA_ARCHITECTURES 90 by default.
# Usage: scripts/build.sh [cmake --build arguments, e.g. --target longattn_cli]
# Environment: LONGATTN_BUILD_DIR (default build), LONGATTN_CMAKE_ARGS (extra configure
# arguments), LONGATTN_JOBS (default: the number of cores).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${LONGATTN_BUILD_DIR:-$root/build}"
jobs="${LONGATTN_JOBS:-$(nproc)}"

if ! command -v nvcc >/dev/null 2>&1 && [[ -x /usr/local/cuda/bin/nvcc ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

# shellcheck disable=SC2086  # LONGATTN_CMAKE_ARGS is a list of arguments
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release ${LONGATTN_CMAKE_ARGS:-}
cmake --build "$build" --parallel "$jobs" "$@"
