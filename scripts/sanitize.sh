#!/usr/bin/env bash
# Builds the code that needs no GPU (CUDA off) with AddressSanitizer and UndefinedBehaviorSanitizer
# and runs the cpu and mpi tests on it: any out-of-bounds access, use after free, leak (cpu
# tests; the mpi tests run with leak detection off, MPI keeps its buffers to the end) or undefined
# behaviour fails the run.
# Environment: LONGATTN_SANITIZE_DIR (default build-sanitize), LONGATTN_JOBS (default: the
# number of cores). Run scripts/install_deps.sh first on a fresh machine.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${LONGATTN_SANITIZE_DIR:-$root/build-sanitize}"
jobs="${LONGATTN_JOBS:-$(nproc)}"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLONGATTN_ENABLE_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined"
cmake --build "$build" --parallel "$jobs"
cd "$build"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ASAN_OPTIONS="detect_leaks=1" ctest -L cpu --output-on-failure
ASAN_OPTIONS="detect_leaks=0" ctest -L mpi --output-on-failure
