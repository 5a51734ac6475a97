#!/usr/bin/env bash
# Multi-GPU scaling of longattn's ring attention beside its PyTorch anchors, in one command:
# for each GPU count, multigpu_bench under mpirun (one rank per GPU, NCCL) and
# torch_anchors.py under torch's launcher (context_parallel and a FA2 + batch_isend_irecv ring),
# then scaling_report.py merges both into one JSON (GPU, date, command) and a table with
# efficiency (per-GPU TFLOP/s over one GPU's at the local length), exposed communication and the
# ratios to the anchors. Each program stops starting new cases after its time budget.
#
#   bench/multigpu/run_scaling.sh [--bin DIR] [--out-dir DIR] [--gpus "1 2 4"]
#       [--weak 32768,16384,65536] [--strong 131072] [--strong-fwd 262144]
#       [--long-fwd 1048576] [--budget "15 20 30"] [--torch-budget "10 20 30"] [--no-anchors]
#   --bin        folder with multigpu_bench (default: build-nccl/bin)
#   --out-dir    where rows and results go (default: $OUT when set, else bench/results)
#   --weak       tokens per GPU (both causal zigzag and non-causal, forward and backward)
#   --strong     total tokens (causal zigzag, forward and backward)
#   --strong-fwd total tokens (causal zigzag, forward only)
#   --long-fwd   total tokens, forward only, on the largest GPU count only
#   --budget / --torch-budget  seconds per GPU count (same order as --gpus)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/build-nccl/bin"
out_dir="${OUT:-$root/bench/results}"
gpus="1 2 4"
weak="32768,16384,65536"
strong="131072"
strong_fwd="262144"
long_fwd=""
budget="15 20 30"
torch_budget="10 20 30"
anchors=1
command_line="bench/multigpu/run_scaling.sh $*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    --gpus) gpus="$2"; shift 2 ;;
    --weak) weak="$2"; shift 2 ;;
    --strong) strong="$2"; shift 2 ;;
    --strong-fwd) strong_fwd="$2"; shift 2 ;;
    --long-fwd) long_fwd="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --torch-budget) torch_budget="$2"; shift 2 ;;
    --no-anchors) anchors=0; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run_scaling.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [[ ! -x "$bin/multigpu_bench" ]]; then
  echo "run_scaling.sh: multigpu_bench not found in '$bin' (build the multigpu_bench target)" >&2
  exit 2
fi
# NVLink multicast stays off (shared hosts); PyTorch's symmetric memory likewise.
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" TORCH_SYMM_MEM_DISABLE_MULTICAST=1
mkdir -p "$out_dir"
ours="$out_dir/scaling_longattn.jsonl"
theirs="$out_dir/scaling_pytorch.jsonl"
: > "$ours"
: > "$theirs"
visible=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
read -r -a budgets <<< "$budget"
read -r -a torch_budgets <<< "$torch_budget"
read -r -a counts <<< "$gpus"
largest=${counts[${#counts[@]}-1]}

echo "# $command_line"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || true
i=0
for P in "${counts[@]}"; do
  b=${budgets[$i]:-${budgets[-1]}}
  tb=${torch_budgets[$i]:-${torch_budgets[-1]}}
  i=$((i + 1))
  if (( P > visible )); then
    echo "== $P GPU(s): skipped, $visible visible"
    continue
  fi
  fwd_list="$strong_fwd"
  [[ $P -eq $largest && -n "$long_fwd" ]] && fwd_list="${fwd_list:+$fwd_list,}$long_fwd"
  echo "== longattn, $P GPU(s)"
  mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -np "$P" \
    "$bin/multigpu_bench" --weak "$weak" --strong "$strong" --strong-fwd "$fwd_list" \
    --budget "$b" --out "$ours" || echo "multigpu_bench on $P GPU(s) failed (exit $?)"
  if [[ $anchors -eq 1 ]]; then
    echo "== PyTorch anchors, $P GPU(s)"
    check=()
    (( P > 1 )) && check=(--check)
    python3 -m torch.distributed.run --standalone --nproc_per_node "$P" "$here/torch_anchors.py" \
      --weak "$weak" --strong "$strong" --strong-fwd "$fwd_list" --budget "$tb" \
      --out "$theirs" "${check[@]}" || echo "torch_anchors.py on $P GPU(s) failed (exit $?)"
  fi
done

python3 "$here/scaling_report.py" --ours "$ours" --theirs "$theirs" \
  --out "$out_dir/scaling.json" --table "$out_dir/scaling_table.txt" --command "$command_line"
