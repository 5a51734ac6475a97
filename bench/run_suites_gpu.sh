#!/usr/bin/env bash
# The benchmark suites of `longattn bench` on the GPU machine beside their PyTorch anchors, in ONE
# command that stays inside the 10-minute limit of a GPU command (each step bounded by --budget
# and `timeout`, the whole by --limit). Writes exactly three files into the output folder:
#   suites_gpu.json        every bench run, the anchors and the headline numbers (suite_anchors.py)
#   suites_gpu.log         everything printed
#   suites_gpu_table.txt   the table with the anchors, and the headline
#
# One GPU (--part single): (a) the longest dense forward+backward sequence (maxseq: b=1, h=16,
#   d=128, bf16, causal; doubling from 128K, each trial bounded in time), (b) the sparsity suite
#   (the seeds' shapes and 64K at h=16, d=128: 90..99% sparse beside dense), (c) every
#   implementation at the seeds' configurations; then bench/suite_anchors.py runs SDPA
#   (flash, cuDNN), FlexAttention on the identical block masks and per-segment SDPA on the same
#   GPU and shapes.
# Several GPUs (--part multi, one MPI rank per GPU), in this order: (d) the scaling suite
#   (single GPU vs data-parallel vs ring vs block-sparse ring vs distributed dilated, weak and
#   strong), (f) maxseq of the dense ring (fwd+bwd, h=16, d=128), (g) maxseq of the block-sparse
#   ring and distributed dilated (fwd+bwd, the seeds' h=8, d=64), (e) PyTorch context_parallel
#   on the scaling shapes (bench/multigpu/torch_anchors.py under torch.distributed.run),
#   (h) context_parallel forward at the longest dense ring length found, (i) maxseq of
#   data-parallel (forward; each rank holds whole sequences, so it cannot go past one GPU).
#
# Long (--part long, several GPUs): one trial of the dense ring fwd+bwd at --long-n (default 4M)
#   with most of the command's time, and context_parallel's forward at that length.
#
#   bench/run_suites_gpu.sh [--bin DIR] [--out-dir DIR] [--part single|multi|long|auto]
#                           [--limit SECONDS] [--long-n N] [--quick] [--cpu-smoke]
#   --bin        folder holding longattn built with CUDA (default: build-bench-cuda/bin)
#   --out-dir    default: $OUT when set, else bench/results/gpu
#   --part       auto (default): single with one visible GPU, multi with more
#   --limit      seconds for the whole command (default 540)
#   --long-n     the length of --part long (default 4194304)
#   --quick      tiny sizes: checks that every step runs (a minute or two)
#   --cpu-smoke  the same steps on CPU ranks with tiny sizes and no PyTorch (tests the script)
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
bin="$root/build-bench-cuda/bin"
out_dir="${OUT:-$root/bench/results/gpu}"
part=auto
limit=540
quick=0
cpu=0
long_n=4194304
command_line="bench/run_suites_gpu.sh $*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    --part) part="$2"; shift 2 ;;
    --limit) limit="$2"; shift 2 ;;
    --quick) quick=1; shift ;;
    --long-n) long_n="$2"; shift 2 ;;
    --cpu-smoke) cpu=1; quick=1; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    *) echo "run_suites_gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

longattn="$bin/longattn"
if [[ ! -x "$longattn" ]]; then
  echo "run_suites_gpu.sh: longattn not found at '$longattn' (build longattn_cli, or pass --bin)" >&2
  exit 2
fi
mkdir -p "$out_dir"
log="$out_dir/suites_gpu.log"
work="$(mktemp -d "${TMPDIR:-/tmp}/longattn_suites.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# Everything below is printed and logged; the log is complete when the command returns.
main() {

# NVLink multicast stays off on the shared hosts; PyTorch's symmetric memory likewise.
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" TORCH_SYMM_MEM_DISABLE_MULTICAST=1
if [[ $cpu -eq 1 ]]; then
  gpus=4
  device=(--device cpu --dtype fp32)
  mpiflags=(--oversubscribe --allow-run-as-root --bind-to none)
  export LONGATTN_CPU_THREADS=1
else
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  device=(--device cuda --dtype bf16)
  mpiflags=(--allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE)
fi
if [[ "$part" == auto ]]; then
  if [[ $cpu -eq 1 ]]; then part=both; elif (( gpus > 1 )); then part=multi; else part=single; fi
fi
if [[ $cpu -eq 0 && $gpus -lt 1 ]]; then
  echo "run_suites_gpu.sh: no GPU visible (nvidia-smi -L); use --cpu-smoke to test the script" >&2
  exit 2
fi

echo "# $command_line"
echo "# part $part, $gpus GPU(s) visible, limit ${limit} s, quick $quick, work folder $work"
date -u +"# %Y-%m-%dT%H:%M:%SZ"
[[ $cpu -eq 0 ]] && nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch; print("# torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null \
  || echo "# torch not importable: anchors will be skipped"

# Seconds a step may take: its own bound, never past the command's limit (30 s kept for merging).
step_time() {
  local want=$1 left=$((limit - SECONDS - 30))
  (( left < want )) && want=$left
  echo $(( want > 0 ? want : 0 ))
}
# step NAME SECONDS CMD...: runs CMD under timeout, reports but survives a failure.
step() {
  local name=$1 secs
  secs=$(step_time "$2")
  shift 2
  if (( secs < 10 )); then
    echo "== $name: skipped, the command's time limit is spent"
    return 0
  fi
  echo "== $name (at most ${secs} s, started at ${SECONDS} s)"
  timeout --signal=TERM --kill-after=15 "$secs" "$@"
  local rc=$?
  (( rc != 0 )) && echo "== $name: exit code $rc (3: #wrong > 0, 124: timed out)"
  return 0
}
# Budget inside a step: bench stops starting rows this many seconds before the step's bound.
budget_of() { local s; s=$(step_time "$1"); echo $(( s > 40 ? s - 30 : s * 2 / 3 )); }
# The longest exact N a bench JSON's ring trials passed (0: none).
longest_ring() {
  python3 - "$1" <<'PY'
import json, sys
try:
    rows = json.load(open(sys.argv[1])).get("rows", [])
    print(max([r["N"] for r in rows if r.get("mode") == "ring" and "median_ms" in r
               and r.get("status") in ("ok", "time") and r.get("wrong", 1) == 0] or [0]))
except Exception:
    print(0)
PY
}

bench=("$longattn" bench "${device[@]}")
inputs=()

if [[ "$part" == single || "$part" == both ]]; then
  if [[ $quick -eq 1 ]]; then
    ms=(--heads 4 --head-dim 64 --min-n 4K --max-n 16K --granularity 4K --trial-seconds 10)
    sp=(-n 4096 --heads 4 --head-dim 64 --max-seconds 0.2)
    im=(-n 2048 -b 1 --heads 4 --head-dim 64 --max-seconds 0.1)
    [[ $cpu -eq 1 ]] && { ms=(--heads 2 --head-dim 16 --min-n 512 --max-n 2048 --granularity 512 --trial-seconds 5);
                         sp=(-n 512 --heads 3 --head-dim 16 --block-size 64 --max-seconds 0.05);
                         im=(-n 256 -b 1 --heads 3 --head-dim 16 --max-seconds 0.05); }
    flex_min=0
  else
    ms=(--heads 16 --head-dim 128 --min-n 128K --max-n 8M --granularity 128K --trial-seconds 90)
    sp=(--max-seconds 1 --repeats 20)
    im=(--max-seconds 0.5 --repeats 20)
    flex_min=65536
  fi
  step "(a) maxseq, dense fwd+bwd, one GPU" 180 "${bench[@]}" --suite maxseq --modes dense \
    "${ms[@]}" --budget "$(budget_of 180)" --json "$work/maxseq_1gpu.json"
  inputs+=("$work/maxseq_1gpu.json")
  step "(b) sparsity suite" 100 "${bench[@]}" --suite sparsity "${sp[@]}" \
    --budget "$(budget_of 100)" --mask-dir "$work/masks" --json "$work/sparsity.json"
  inputs+=("$work/sparsity.json")
  step "(c) implementations at the seeds' configurations" 80 "${bench[@]}" \
    --suite implementations "${im[@]}" --budget "$(budget_of 80)" --mask-dir "$work/masks" \
    --json "$work/implementations.json"
  inputs+=("$work/implementations.json")
fi

cp_jsonl="$work/context_parallel.jsonl"
if [[ "$part" == multi || "$part" == both ]]; then
  P=$gpus
  if [[ $quick -eq 1 ]]; then
    sc=(--local-n 4096 -n 16384 --heads 4 --head-dim 64 --max-seconds 0.2)
    md=(--heads 4 --head-dim 64 --min-n 16K --max-n 64K --granularity 16K --trial-seconds 10)
    mx=(--heads 8 --head-dim 64 --min-n 64K --max-n 256K --granularity 64K --trial-seconds 10)
    cpw=4096; cps=16384; cph=(--heads 4 --head-dim 64)
    [[ $cpu -eq 1 ]] && { sc=(--local-n 128 -n 512 --heads 3 --head-dim 16 --max-seconds 0.05);
                         md=(--heads 3 --head-dim 16 --min-n 1K --max-n 4K --granularity 1K --trial-seconds 5);
                         mx=(--heads 3 --head-dim 16 --min-n 4K --max-n 16K --granularity 4K --trial-seconds 5 --window 128 --segment-lengths 256,512,1024); }
  else
    sc=(--local-n 32K -n 128K --max-seconds 0.5 --min-repeats 2 --repeats 10)
    md=(--heads 16 --head-dim 128 --min-n 512K --max-n 64M --granularity 512K --trial-seconds 100)
    mx=(--heads 8 --head-dim 64 --min-n 2M --max-n 512M --granularity 2M --trial-seconds 30)
    cpw=32768; cps=131072; cph=(--heads 16 --head-dim 128)
  fi
  mpi=(mpirun "${mpiflags[@]}" -np "$P")
  # In order of what matters most; a step the limit no longer allows is skipped.
  step "(d) scaling suite on $P ranks" 110 "${mpi[@]}" "${bench[@]}" --suite scaling "${sc[@]}" \
    --budget "$(budget_of 110)" --comm-timeout 120 --json "$work/scaling.json"
  inputs+=("$work/scaling.json")
  step "(f) maxseq, dense ring fwd+bwd, $P ranks" 150 "${mpi[@]}" "${bench[@]}" --suite maxseq \
    --modes dense "${md[@]}" --check-rows 2 --budget "$(budget_of 150)" --comm-timeout 120 \
    --json "$work/maxseq_ring.json"
  inputs+=("$work/maxseq_ring.json")
  step "(g1) maxseq, block-sparse ring fwd+bwd, $P ranks" 60 "${mpi[@]}" "${bench[@]}" \
    --suite maxseq --modes block_sparse "${mx[@]}" --check-rows 2 --budget "$(budget_of 60)" \
    --comm-timeout 120 --json "$work/maxseq_block_sparse.json"
  inputs+=("$work/maxseq_block_sparse.json")
  step "(g2) maxseq, distributed dilated fwd+bwd, $P ranks" 60 "${mpi[@]}" "${bench[@]}" \
    --suite maxseq --modes dilated "${mx[@]}" --check-rows 2 --budget "$(budget_of 60)" \
    --comm-timeout 120 --json "$work/maxseq_dilated.json"
  inputs+=("$work/maxseq_dilated.json")
  if [[ $cpu -eq 0 ]]; then
    step "(e) PyTorch context_parallel, scaling shapes" 60 python3 -m torch.distributed.run \
      --standalone --nproc_per_node "$P" "$here/multigpu/torch_anchors.py" --weak "$cpw" \
      --strong "$cps" --impls context_parallel "${cph[@]}" --budget "$(budget_of 60)" \
      --out "$cp_jsonl"
    longest=$(longest_ring "$work/maxseq_ring.json")
    if (( longest > 0 )); then
      step "(h) PyTorch context_parallel forward at N=$longest" 50 python3 -m torch.distributed.run \
        --standalone --nproc_per_node "$P" "$here/multigpu/torch_anchors.py" --weak "" \
        --strong-fwd "$longest" --impls context_parallel "${cph[@]}" --repeats 1 --budget 5 \
        --out "$cp_jsonl"
    fi
  fi
  step "(i) maxseq, data-parallel fwd (one whole sequence per rank), $P ranks" 40 "${mpi[@]}" \
    "${bench[@]}" --suite maxseq --modes data_parallel:fwd "${md[@]}" --check-rows 2 \
    --budget "$(budget_of 40)" --comm-timeout 120 --json "$work/maxseq_data_parallel.json"
  inputs+=("$work/maxseq_data_parallel.json")
fi

# One long trial: the dense ring fwd+bwd at exactly --long-n over every GPU (the 4-GPU goal of
# 4M tokens takes minutes: it gets a command of its own), with context_parallel's forward at the
# same length if it passed.
if [[ "$part" == long ]]; then
  P=$gpus
  mpi=(mpirun "${mpiflags[@]}" -np "$P")
  hd=(--heads 16 --head-dim 128)
  [[ $cpu -eq 1 ]] && hd=(--heads 3 --head-dim 16)
  step "(l) dense ring fwd+bwd at N=$long_n on $P ranks" $((limit - 90)) "${mpi[@]}" \
    "${bench[@]}" --suite maxseq --modes dense "${hd[@]}" --min-n "$long_n" --max-n "$long_n" \
    --granularity "$long_n" --trial-seconds $((limit - 120)) --check-rows 2 --comm-timeout 300 \
    --json "$work/maxseq_ring_long.json"
  inputs+=("$work/maxseq_ring_long.json")
  if [[ $cpu -eq 0 ]] && (( $(longest_ring "$work/maxseq_ring_long.json") > 0 )); then
    step "(m) PyTorch context_parallel forward at N=$long_n" 60 python3 -m torch.distributed.run \
      --standalone --nproc_per_node "$P" "$here/multigpu/torch_anchors.py" --weak "" \
      --strong-fwd "$long_n" --impls context_parallel "${hd[@]}" --repeats 1 --budget 5 \
      --out "$cp_jsonl"
  fi
fi

present=()
for f in "${inputs[@]}"; do [[ -s "$f" ]] && present+=("$f"); done
if (( ${#present[@]} == 0 )); then
  echo "run_suites_gpu.sh: no bench run left a JSON file" >&2
  exit 1
fi
anchor_flags=(--flex-min-n "${flex_min:-65536}")
[[ $cpu -eq 1 || "$part" == multi || "$part" == long ]] && anchor_flags+=(--no-torch)
echo "== merging ${#present[@]} runs$([[ "$part" == single && $cpu -eq 0 ]] && echo ' and running the single-GPU PyTorch anchors') (at ${SECONDS} s)"
secs=$(( limit - SECONDS ))
(( secs < 20 )) && { anchor_flags+=(--no-torch); secs=20; }
anchor_flags+=(--deadline $(( secs > 40 ? secs - 30 : secs / 2 )))
timeout --signal=TERM --kill-after=10 "$secs" python3 "$here/suite_anchors.py" --in "${present[@]}" \
  --cp-jsonl "$cp_jsonl" --out "$out_dir/suites_gpu.json" --table "$out_dir/suites_gpu_table.txt" \
  --command "$command_line" "${anchor_flags[@]}" > /dev/null \
  || { echo "== anchors did not finish: merging without them";
       python3 "$here/suite_anchors.py" --in "${present[@]}" --cp-jsonl "$cp_jsonl" --no-torch \
         --out "$out_dir/suites_gpu.json" --table "$out_dir/suites_gpu_table.txt" \
         --command "$command_line" > /dev/null; }
sed -n '/^# headline/,$p' "$out_dir/suites_gpu_table.txt"
echo "# wrote $out_dir/suites_gpu.json, suites_gpu_table.txt, suites_gpu.log (${SECONDS} s)"
}
main 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
