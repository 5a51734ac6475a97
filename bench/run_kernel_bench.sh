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
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
bin="$root/build-gpu/bin/kernel_bench"
out_dir="${OUT:-$root/bench/results}"
quick=0
anchors=1
flash_test=""
extra=()
command_line="bench/run_kernel_bench.sh $*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --no-anchors) anchors=0; shift ;;
    --flash-kernels) flash_test="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run_kernel_bench.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

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
"$bin" --out "$ours" --mask-dir "$out_dir/masks" "${sweep[@]}" "${extra[@]}"

if [[ $anchors -eq 1 ]]; then
  python3 "$here/anchors.py" --ours "$ours" --out "$merged" --table "$table" \
    --command "$command_line" $([[ $quick -eq 1 ]] && echo "--repeats 10 --max-seconds 1")
else
  python3 - "$ours" "$merged" "$command_line" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
r["kernel_bench_command"], r["command"] = r.get("command"), sys.argv[3]
r["anchors_error"] = "not run (--no-anchors)"
json.dump(r, open(sys.argv[2], "w"), indent=1)
EOF
fi
echo "# wrote $merged and $table"

if [[ -n "$flash_test" ]]; then
  LONGATTN_BENCH_JSON="$out_dir/flash_kernels_ours.json" "$flash_test" \
    --gtest_also_run_disabled_tests --gtest_filter='*Bench*'
  python3 "$here/kernel_anchor.py" "$out_dir/flash_kernels_ours.json" \
    "$out_dir/flash_kernels.json" --command "$command_line"
  echo "# wrote $out_dir/flash_kernels.json"
fi
