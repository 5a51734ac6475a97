#!/usr/bin/env bash
# Checks bench/run_session_4gpu.sh without GPUs: `dry` (its plan and the commands it would run,
# argument errors), `smoke` (parts c and d end to end on 4 CPU ranks). Exit 0: every check held.
#   tests/bench/session_4gpu_check.sh dry OUT_DIR
#   tests/bench/session_4gpu_check.sh smoke OUT_DIR BIN_DIR
set -uo pipefail

mode=${1:?mode: dry or smoke}
out=${2:?output folder}
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
script="$root/bench/run_session_4gpu.sh"
passes=0
failures=0
check() {  # check DESCRIPTION COMMAND...: counts a failure when COMMAND fails
  local what=$1
  shift
  if "$@"; then
    echo "ok: $what"; passes=$((passes + 1))
  else
    echo "FAILED: $what"; failures=$((failures + 1))
  fi
}
rm -rf "$out"
mkdir -p "$out"
printed="$out.stdout"

# Files the session leaves: at most 8, no folders, no machine paths.
check_outputs() {
  local n
  n=$(find "$out" -mindepth 1 -maxdepth 1 -type f | wc -l)
  check "at most 8 files in the output folder ($n)" test "$n" -le 8 -a "$n" -ge 2
  check "no folder in the output folder" test -z "$(find "$out" -mindepth 1 -type d)"
  check "no absolute repository path in the outputs" bash -c "! grep -rl -- '$root' '$out'"
  check "no absolute output path in the outputs" bash -c "! grep -rl -- '$out/' '$out'"
  check "session_4gpu.json is JSON with the steps and the plan" python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
assert d['steps'] and d['plan']['limits'], d
" "$out/session_4gpu.json"
}

case "$mode" in
  dry)
    OUT="" bash "$script" --dry-run --out-dir "$out" --assume-gpus 4 --assume-mem-mib 81559 \
      > "$printed" 2>&1
    rc=$?
    cat "$printed"
    check "dry run exits 0" test "$rc" -eq 0
    for p in a b c d; do
      check "plan names part $p" grep -q "^#  part $p: at most" "$printed"
    done
    check "every mpirun keeps NVLink multicast off and runs as root" bash -c "
      grep '^   mpirun' '$printed' > '$out.mpi' && test -s '$out.mpi' &&
      ! grep -v -- '--allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST -x NVSHMEM_DISABLE_NVLS' '$out.mpi'"
    check "weak scaling on 1, 2 and 4 GPUs" bash -c "
      for P in 1 2 4; do grep -q -- \"-np \$P .*multigpu_bench --weak 16384,32768,65536,131072 --causal both\" '$printed' || exit 1; done"
    check "context_parallel anchors on 1, 2 and 4 GPUs" bash -c "
      for P in 1 2 4; do grep -q -- \"--nproc_per_node \$P .*torch_anchors.py .*--impls context_parallel\" '$printed' || exit 1; done"
    check "strong scaling runs the lengths part a leaves (1M on 4 GPUs)" \
      grep -q -- "-np 4 .*multigpu_bench --weak 8192 --causal causal --strong 1048576 " "$printed"
    check "part c: 4M fits 80 GB (about 70 GiB per GPU), the part's time picks the length" \
      grep -q "== c1: N=[0-9]* on 4 GPU(s): 4194304 does not fit (time): predicted 70 GiB per GPU of 76 usable" "$printed"
    check "dilated search on 4 GPUs" grep -q -- "-np 4 .*--modes dilated --heads 8 --head-dim 64" "$printed"
    check "parts start in order a, b, c, d" bash -c "
      test \"\$(grep -o '^== part [abcd]' '$printed' | tr -d '\n')\" = '== part a== part b== part c== part d'"
    check "the dry run's clock stays inside the budget" bash -c "
      at=\$(grep -o '^== merge and summary (at [0-9]*' '$printed' | grep -o '[0-9]*\$'); test \"\$at\" -le 520"
    check_outputs
    # A bad argument is refused with its name.
    OUT="" bash "$script" --dry-run --out-dir "$out" --budget abc > "$printed" 2>&1
    rc=$?
    check "--budget abc: exit 2 naming --budget" bash -c "test $rc -eq 2 && grep -q -- \"--budget 'abc'\" '$printed'"
    OUT="" bash "$script" --dry-run --out-dir "$out" --parts a,x > "$printed" 2>&1
    rc=$?
    check "--parts a,x: exit 2 naming --parts" bash -c "test $rc -eq 2 && grep -q -- '--parts' '$printed'"
    ;;
  smoke)
    bin=${3:?folder holding longattn}
    OUT="" bash "$script" --cpu-smoke --bin "$bin" --out-dir "$out" > "$printed" 2>&1
    rc=$?
    cat "$printed"
    check "CPU smoke run exits 0" test "$rc" -eq 0
    for f in maxseq_ring.json maxseq_data_parallel.json maxseq_dilated.json session_4gpu.log; do
      check "$f written" test -s "$out/$f"
    done
    check_outputs
    check "each part found a length, every sampled row right" python3 -c "
import json, sys
d = json.load(open(sys.argv[1]))
for k in ('long_ring', 'data_parallel', 'dilated'):
    assert d[k].get('longest_N', 0) > 0 and d[k]['wrong_rows'] == 0, (k, d[k])
assert [s['result'] for s in d['steps']] == ['ok', 'ok', 'ok'], d['steps']
" "$out/session_4gpu.json"
    ;;
  *) echo "mode must be dry or smoke" >&2; exit 2 ;;
esac
echo "$passes passed, $failures failed"
exit $((failures == 0 ? 0 : 1))
