#!/usr/bin/env bash
# CI check of the installed package: `cmake --install` a built tree into a temporary prefix,
# build examples/train_step against it with find_package(longattn), run it on CPU ranks under
# mpirun (and once more through the installed longattn-mpirun launcher) and check its exit code.
# Usage: .ci/check_install.sh [BUILD_DIR]   (default: build; configured and built if needed)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
log() { echo "check_install: $*"; }

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  log "configuring $build"
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release
fi
log "building $build (everything an install needs)"
cmake --build "$build" --parallel "$jobs"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
prefix="$work/prefix"
log "cmake --install $build --prefix $prefix"
cmake --install "$build" --prefix "$prefix" >"$work/install.log"

# The layout users and the package config rely on.
for f in bin/longattn bin/longattn-mpirun bin/longattn.sbatch \
         include/longattn/attention/variant.hpp include/longattn/comm/communicator.hpp \
         include/longattn/kernels/backend.hpp include/longattn/runtime/tensor.hpp \
         lib/cmake/longattn/longattnConfig.cmake lib/cmake/longattn/longattnConfigVersion.cmake \
         lib/cmake/longattn/longattnTargets.cmake; do
  if [[ ! -e "$prefix/$f" ]]; then
    log "missing from the install tree: $f"
    exit 1
  fi
done
for f in bin/longattn bin/longattn-mpirun bin/longattn.sbatch; do
  [[ -x "$prefix/$f" ]] || { log "$f is not executable"; exit 1; }
done
if command -v shellcheck >/dev/null 2>&1; then
  shellcheck "$prefix/bin/longattn-mpirun" "$prefix/bin/longattn.sbatch"
fi

# The example sees only the prefix: no path into the source or build tree.
log "building examples/train_step against the installed package"
cmake -S "$root/examples/train_step" -B "$work/example" -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$prefix" >"$work/example-configure.log" ||
  { cat "$work/example-configure.log"; exit 1; }
cmake --build "$work/example" --parallel "$jobs"
example="$work/example/train_step"

mpirun_flags=(--oversubscribe --bind-to none)
if [[ "$(id -u)" -eq 0 ]]; then
  mpirun_flags+=(--allow-run-as-root)
fi
export LONGATTN_CPU_THREADS=1
log "mpirun ${mpirun_flags[*]} -np 2 train_step"
mpirun "${mpirun_flags[@]}" -np 2 "$example"

# The installed launcher on CPU ranks, with a rank count that does not divide evenly into 2.
log "longattn-mpirun --cpu --np 3 -- train_step"
"$prefix/bin/longattn-mpirun" --cpu --np 3 -- "$example"
log "installed package builds and runs the example"
