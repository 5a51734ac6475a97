#!/usr/bin/env bash
# The `longattn bench` suites on CPU ranks at small sizes (the CPU backend is the fp64-accumulating
# reference: a few GFLOP/s per core), on 1, 2 and 4 ranks, with JSON, CSV, the tables and the
# plots written to one folder. What bench/results/cpu/ holds was made by this script.
#
#   bench/run_suites_cpu.sh [--bin DIR] [--out-dir DIR] [--ranks "1 2 4"]
#   --bin      folder holding longattn (default: build-bench/bin; relative to the source tree)
#   --out-dir  default: bench/results/cpu (relative to the source tree)
#   --ranks    the rank counts of the scaling and maxseq suites
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
# Paths relative to the source tree, so the commands recorded in the results are too.
cd "$root"
bin="build-bench/bin"
out="bench/results/cpu"
ranks="1 2 4"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out-dir) out="$2"; shift 2 ;;
    --ranks) ranks="$2"; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "run_suites_cpu.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
mkdir -p "$out"
# One thread per rank everywhere, so that 1, 2 and 4 ranks differ only in their number.
export LONGATTN_CPU_THREADS=1
mpirun_np() { mpirun --oversubscribe --allow-run-as-root --bind-to none -np "$@"; }
shape=(--heads 4 --head-dim 32 --dtype fp32)

# file-name stem, then the longattn bench arguments; the table goes to <stem>.txt.
run() {
  local stem=$1
  shift
  echo "== $stem"
  "$@" --json "$out/$stem.json" --csv "$out/$stem.csv" | tee "$out/$stem.txt"
}

run implementations_np1 mpirun_np 1 "$bin/longattn" bench --suite implementations -n 512 1024 \
  -b 1 2 "${shape[@]}" --max-seconds 1
run sparsity_np1 mpirun_np 1 "$bin/longattn" bench --suite sparsity -n 1024 2048 -b 1 \
  "${shape[@]}" --block-size 64 --max-seconds 1
for P in $ranks; do
  run "scaling_np$P" mpirun_np "$P" "$bin/longattn" bench --suite scaling --local-n 256 512 \
    -n 2048 "${shape[@]}" --segment-lengths 64,128,256 --max-seconds 1
  run "maxseq_np$P" mpirun_np "$P" "$bin/longattn" bench --suite maxseq "${shape[@]}" \
    --max-n 32768 --trial-seconds 10 --budget 150 --segment-lengths 512,1024,2048
done
bench/plot "$out"/*.json --out-dir "$out/plots" --prefix cpu_
