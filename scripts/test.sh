#!/usr/bin/env bash
# Installs what is missing, builds every target (the CUDA ones too when nvcc is found) and runs
# the tests: cpu, mpi (CPU ranks under mpirun) and gpu (which skip without a GPU).
# Environment: as scripts/build.sh (LONGATTN_BUILD_DIR, LONGATTN_CMAKE_ARGS, LONGATTN_JOBS).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${LONGATTN_BUILD_DIR:-$root/build}"

bash "$root/scripts/install_deps.sh"
LONGATTN_BUILD_DIR="$build" bash "$root/scripts/build.sh"
cd "$build"
ctest -L "cpu|mpi|gpu" --output-on-failure
