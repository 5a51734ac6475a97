#!/usr/bin/env bash
# Runs longattn's CUDA kernel benchmark (kernel_bench) and its PyTorch anchors (anchors.py) in one
# command on one GPU, writing one merged JSON and a table. Usage:
#   bench/run_kernel_bench.sh [--bin PATH] [--out-dir DIR] [--quick] [--no-anchors]
#                             [--flash-kernels TEST_GPU] [-- extra kernel_bench options]
#   --bin      the kernel_bench executable (default: build-gpu/bin/kernel_bench)
#   --out-dir  where kernel_bench.json, kernel_bench_table.txt and the masks go
#              (default: $OUT when set, else bench/results)
#   --quick    a small sweep (n <= 16K, fewer rows) to check that everything runs
#   --flash-kernels TEST_GPU  also run the kernels' own dense bench (the disabled *Bench* test
#              of TEST_GPU) with bench/kernel_anchor.py -> flash_kernels.json
#   --rounds N run kernel_bench and its anchors N times, one after the other (round I writes
#              kernel_bench_rI.json and kernel_bench_table_rI.txt); kernel_bench.json is then the
#              rounds merged by bench/anchor_rounds.py: medians, and each ratio the median of
#              the rounds' paired ratios (default 1: one round, no merge)
#   --anchors LIST  only these anchors (comma-separated: sdpa_flash, sdpa_cudnn, flex,
#              dilated_sdpa; default: all of a row's)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
bin="$root/build-gpu/bin/kernel_bench"
out_dir="${OUT:-$root/bench/results}"
quick=0
anchors=1
flash_test=""
rounds=1
only=""
extra=()
command_line="bench/run_kernel_bench.sh $*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-anchors) anchors=0; shift ;;
    --flash-kernels) flash_test="$2"; shift 2 ;;
    --rounds) rounds="${2:-}"; shift 2 || { echo "run_kernel_bench.sh: --rounds needs a value" >&2; exit 2; } ;;
    --anchors) only="${2:-}"; shift 2 || { echo "run_kernel_bench.sh: --anchors needs a value" >&2; exit 2; } ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run_kernel_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if ! [[ "$rounds" =~ ^[0-9]+$ ]] || (( rounds < 1 || rounds > 100 )); then
  echo "run_kernel_bench.sh: --rounds must be a whole number from 1 to 100, not '$rounds'" >&2
  exit 2
fi
if [[ -n "$only" && $anchors -eq 0 ]]; then
  echo "run_kernel_bench.sh: --anchors and --no-anchors together" >&2
  exit 2
fi
if [[ ! -x "$bin" ]]; then
  echo "run_kernel_bench.sh: kernel_bench not found at '$bin' (build the kernel_bench target, or pass --bin)" >&2
  exit 2
fi
mkdir -p "$out_dir"
ours="$out_dir/kernel_bench_ours.json"
merged="$out_dir/kernel_bench.json"
table="$out_dir/kernel_bench_table.txt"

sweep=()
if [[ $quick -eq 1 ]]; then
  sweep=(--dense-n 4096 16384 --densities 0.25 0.05 --sparse-n 16384 --dilated-n 8192 16384
         --repeats 10 --max-seconds 1)
fi

echo "# $command_line"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
only_arg=()
[[ -n "$only" ]] && only_arg=(--only "$only")
quick_arg=()
[[ $quick -eq 1 ]] && quick_arg=(--repeats 10 --max-seconds 1)

# One round: kernel_bench's rows into $1, then (with anchors) the anchors into $2 and table $3.
one_round() {
  "$bin" --out "$1" --mask-dir "$out_dir/masks" "${sweep[@]}" "${extra[@]}"
  if [[ $anchors -eq 1 ]]; then
    python3 "$here/anchors.py" --ours "$1" --out "$2" --table "$3" \
      --command "$command_line" "${only_arg[@]}" "${quick_arg[@]}"
  else
    python3 - "$1" "$2" "$command_line" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["kernel_bench_command"], r["command"] = r.get("command"), sys.argv[3]
r["anchors_error"] = "not run (--no-anchors)"
json.dump(r, open(sys.argv[2], "w"), indent=1)
EOF
  fi
}

if [[ $rounds -eq 1 ]]; then
  one_round "$ours" "$merged" "$table"
else
  round_files=()
  for ((i = 1; i <= rounds; i++)); do
    echo "# round $i of $rounds"
    one_round "$out_dir/kernel_bench_ours_r$i.json" "$out_dir/kernel_bench_r$i.json" \
      "$out_dir/kernel_bench_table_r$i.txt"
    round_files+=("$out_dir/kernel_bench_r$i.json")
  done
  python3 "$here/anchor_rounds.py" "${round_files[@]}" --out "$merged" --table "$table" \
    --command "$command_line"
fi
echo "# wrote $merged and $table"

if [[ -n "$flash_test" ]]; then
  LONGATTN_BENCH_JSON="$out_dir/flash_kernels_ours.json" "$flash_test" \
    --gtest_also_run_disabled_tests --gtest_filter='*Bench*'
  python3 "$here/kernel_anchor.py" "$out_dir/flash_kernels_ours.json" \
    "$out_dir/flash_kernels.json" --command "$command_line"
  echo "# wrote $out_dir/flash_kernels.json"
fi
