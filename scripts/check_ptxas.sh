#!/usr/bin/env bash
# Compiles every Hopper kernel translation unit (kernels/cuda/sm90/*.cu) with ptxas's report, as
# the build compiles it, and fails when ptxas reports a "Potential Performance Loss" in any of
# them (wgmma serialised for lack of registers, by non-wgmma definitions of accumulators, by
# divergent paths: C7510-C7520), which slows a kernel by 20% or more and builds without a word.
# It also lists each kernel's registers and spills. Usage:
#   scripts/check_ptxas.sh [BUILD_DIR]
# BUILD_DIR (default: $LONGATTN_BUILD_DIR, else build) is a build configured with CUDA for
# sm_90; without the Hopper target there is nothing to check and the script says so.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-${LONGATTN_BUILD_DIR:-$root/build}}"
jobs="${LONGATTN_JOBS:-$(nproc)}"
flags_file="$build/CMakeFiles/longattn_cuda_sm90.dir/flags.make"
if [[ ! -f "$flags_file" ]]; then
  echo "check_ptxas: no Hopper kernel target in '$build' (configure with CUDA and sm_90): nothing to check"
  exit 0
fi
nvcc="$(sed -n 's/^CMAKE_CUDA_COMPILER:[A-Z]*=//p' "$build/CMakeCache.txt")"
field() { sed -n "s/^$1 = //p" "$flags_file"; }
defines="$(field CUDA_DEFINES)"
includes="$(field CUDA_INCLUDES)"
cflags="$(field CUDA_FLAGS)"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

compile() {  # one translation unit: its ptxas report in $out/<name>.log
  local tu="$1" name
  name="$(basename "$tu" .cu)"
  # shellcheck disable=SC2086  # (the flags are word lists)
  if ! (cd "$build" && "$nvcc" $defines $includes $cflags -Xptxas -v -c "$tu" \
          -o "$out/$name.o") > "$out/$name.log" 2>&1; then
    echo "check_ptxas: $name did not compile:" >&2
    cat "$out/$name.log" >&2
    return 1
  fi
}
export -f compile
export build nvcc defines includes cflags out
find "$root/kernels/cuda/sm90" -name '*.cu' | sort | xargs -P "$jobs" -I{} bash -c 'compile "$@"' _ {}

status=0
for log in "$out"/*.log; do
  name="$(basename "$log" .log)"
  regs="$(grep -o 'Used [0-9]* registers' "$log" | awk '{print $2}' | sort -n | tail -n1)"
  spill="$(grep -o '[0-9]* bytes spill stores' "$log" | awk '{print $1}' | sort -n | tail -n1)"
  printf '%-44s registers %4s  spill stores %4s bytes\n' "$name" "${regs:--}" "${spill:-0}"
  if grep -q 'Potential Performance Loss' "$log"; then
    grep 'Potential Performance Loss' "$log" | sed -E "s/^ptxas info *: /  $name: /" >&2
    status=1
  fi
done
if [[ "$status" -ne 0 ]]; then
  echo "check_ptxas: ptxas serialises wgmma in the kernels above" >&2
else
  echo "check_ptxas: no wgmma serialised in $(ls "$out"/*.log | wc -l) translation units"
fi
exit "$status"
