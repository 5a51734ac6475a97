#!/usr/bin/env bash
# The main job on a machine without GPUs: installs what is missing, builds the longattn command,
# and runs `longattn verify --all` over 4 CPU ranks under mpirun. Every variant (dense ring with
# contiguous and zigzag sharding, data-parallel, distributed dilated in both modes, the
# block-sparse ring with every pattern and preset), causal and not, in fp64 and bf16, runs
# distributed and is checked against a naive fp64 reference; rank 0 prints the result table.
# Usage: scripts/main.sh [more longattn verify options]   (LONGATTN_NP: ranks, default 4)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${LONGATTN_BUILD_DIR:-$root/build}"
np="${LONGATTN_NP:-4}"

bash "$root/scripts/install_deps.sh"
LONGATTN_BUILD_DIR="$build" bash "$root/scripts/build.sh" --target longattn_cli

# More ranks than cores is fine on CPU ranks; root needs Open MPI's explicit permission.
mpirun_flags=(--oversubscribe --bind-to none)
if [[ "$(id -u)" -eq 0 ]]; then
  mpirun_flags+=(--allow-run-as-root)
fi
set -x
mpirun "${mpirun_flags[@]}" -np "$np" "$build/bin/longattn" verify --all --dtype fp64,bf16 "$@"
