#!/usr/bin/env bash
# One multi-GPU measurement session in ONE command (default 540 s, inside the 10-minute limit of
# a GPU command), four parts in order of value, each with its own time limit so a slow part
# cannot starve the next (the time plan is printed first; bench/multigpu/session_4gpu.py holds
# its arithmetic, the time and memory models included):
#  a) weak scaling on 1, 2, 4 GPUs at --weak tokens per GPU (d=128, h=16, bf16; causal zigzag
#     and non-causal; forward and forward+backward): multigpu_bench, then PyTorch's SDPA (1 GPU)
#     and context_parallel (2, 4 GPUs; causal load-balanced, non-causal with its load balancing
#     off) through bench/multigpu/torch_anchors.py, in the same command;
#  b) strong scaling, dense ring causal fwd+bwd, at --strong total tokens on 1, 2, 4 GPUs: the
#     lengths part a did not already measure (a causal weak row at N total tokens is the strong
#     row at N), largest GPU count first, as many as the part's time allows;
#  c) one dense ring causal fwd+bwd trial (b=1, h=16, d=128) at --long-n tokens on all GPUs, or
#     at the longest length the GPUs' memory and the part's time allow (said why), then
#     data-parallel (one whole sequence per GPU) with what is left;
#  d) the longest distributed dilated fwd+bwd sequence on all GPUs (h=8, d=64; goal 16M).
# Writes at most 7 files into the output folder (paths relative to the repository, the output
# folder as $OUT): session_4gpu.log (everything printed), session_4gpu.json (plan, steps,
# headline numbers), scaling.json + scaling_table.txt (a and b, with the anchors),
# maxseq_ring.json (c), maxseq_data_parallel.json (c), maxseq_dilated.json (d).
#
#   bench/run_session_4gpu.sh [--bin DIR] [--out-dir DIR] [--budget SECONDS] [--parts a,b,c,d]
#       [--part-seconds a=S,b=S,d=S] [--gpus "1 2 4"] [--weak LIST] [--strong LIST]
#       [--long-n N] [--long-force] [--no-anchors] [--ring-anchor]
#       [--dry-run [--assume-gpus N] [--assume-mem-mib MIB]] [--cpu-smoke]
#   --bin          folder with multigpu_bench and longattn built with CUDA
#                  (default build-gpurun/bin)
#   --out-dir      default: $OUT when set, else bench/results/session_4gpu
#   --budget       seconds for the whole command (default 540)
#   --part-seconds the most parts a, b, d may take (default: their estimates, at most 45%, 20%
#                  and 10% of --budget; a=243,b=108,d=45 at 540 s); c takes the rest
#   --long-n       part c's length (default 4194304); --long-force: that length whatever the models
#   --ring-anchor  also the FA2 + batch_isend_irecv ring of torch_anchors.py (checked first)
#   --dry-run      print the plan and every command, run nothing (no GPU needed)
#   --cpu-smoke    parts c and d on 4 CPU ranks with tiny sizes (a and b need CUDA): tests the
#                  script
set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
helper="$here/multigpu/session_4gpu.py"
bin="$root/build-gpurun/bin"
out_dir="${OUT:-$root/bench/results/session_4gpu}"
budget=540
reserve=20
parts="a,b,c,d"
part_seconds=""
gpu_counts="1 2 4"
weak="16384,32768,65536,131072"
strong="131072,262144,524288,1048576"
long_n=4194304
long_force=0
anchors=1
ring_anchor=0
dry=0
cpu=0
assume_gpus=4
assume_mem=81559
command_line="bench/run_session_4gpu.sh $*"

while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) bin="$2"; shift 2 ;;
    --out-dir) out_dir="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --parts) parts="$2"; shift 2 ;;
    --part-seconds) part_seconds="$2"; shift 2 ;;
    --gpus) gpu_counts="$2"; shift 2 ;;
    --weak) weak="$2"; shift 2 ;;
    --strong) strong="$2"; shift 2 ;;
    --long-n) long_n="$2"; shift 2 ;;
    --long-force) long_force=1; shift ;;
    --no-anchors) anchors=0; shift ;;
    --ring-anchor) ring_anchor=1; shift ;;
    --dry-run) dry=1; shift ;;
    --assume-gpus) assume_gpus="$2"; shift 2 ;;
    --assume-mem-mib) assume_mem="$2"; shift 2 ;;
    --cpu-smoke) cpu=1; shift ;;
    -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
    *) echo "run_session_4gpu.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
bad_arg() { echo "run_session_4gpu.sh: $*" >&2; exit 2; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "--budget:$budget" "--long-n:$long_n" "--assume-gpus:$assume_gpus" \
            "--assume-mem-mib:$assume_mem"; do
  is_uint "${pair#*:}" || bad_arg "${pair%%:*} '${pair#*:}' must be a whole number"
done
(( budget >= 60 )) || bad_arg "--budget $budget must be at least 60 s"
[[ "$parts" =~ ^[abcd](,[abcd])*$ ]] || bad_arg "--parts '$parts' must list a, b, c, d (commas)"
[[ -z "$part_seconds" || "$part_seconds" =~ ^[abd]=[0-9]+(,[abd]=[0-9]+)*$ ]] \
  || bad_arg "--part-seconds '$part_seconds' must be like a=200,b=100,d=45"
has_part() { [[ ",$parts," == *",$1,"* ]]; }
bin="$(cd "$bin" 2>/dev/null && pwd || echo "$bin")"
mkdir -p "$out_dir" || bad_arg "cannot create --out-dir '$out_dir'"
out_dir="$(cd "$out_dir" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/longattn_session.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log="$out_dir/session_4gpu.log"
rm -f "$out_dir"/{session_4gpu.log,session_4gpu.json,scaling.json,scaling_table.txt} \
      "$out_dir"/maxseq_{ring,data_parallel,dilated}.json

# Paths as printed: relative to the repository, the output folder as $OUT, the work folder
# as <work> (the files are rewritten the same way at the end).
san() {
  local s="$*"
  s="${s//$out_dir/\$OUT}"
  s="${s//$work/<work>}"
  s="${s//$root\//}"
  echo "${s//$root/.}"
}

main() {
# NVLink multicast stays off on the shared hosts, in NCCL, PyTorch and NVSHMEM alike.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mpiflags=(--allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x TORCH_SYMM_MEM_DISABLE_MULTICAST
          -x NVSHMEM_DISABLE_NVLS)
H=16; D=128
if [[ $cpu -eq 1 ]]; then
  export LONGATTN_CPU_THREADS=1
  mpiflags+=(--oversubscribe -x LONGATTN_CPU_THREADS)
  device=(--device cpu --dtype fp32)
  visible=4; mem_mib=0
  H=3; D=16
  long_n=2048; long_force=1
  weak="128,256"; strong="512,1024"
elif [[ $dry -eq 1 ]]; then
  device=(--device cuda --dtype bf16)
  visible=$assume_gpus; mem_mib=$assume_mem
else
  device=(--device cuda --dtype bf16)
  visible=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null \
            | sort -n | head -1 | tr -dc '0-9')
  mem_mib=${mem_mib:-0}
  if (( visible < 1 )); then
    echo "run_session_4gpu.sh: no GPU visible (nvidia-smi -L); --dry-run or --cpu-smoke" \
         "test the script" >&2
    return 2
  fi
fi
read -r -a want_counts <<< "$gpu_counts"
counts=()
for P in "${want_counts[@]}"; do
  is_uint "$P" && (( P >= 1 && P <= visible )) && counts+=("$P")
done
if (( ${#counts[@]} == 0 )); then
  echo "run_session_4gpu.sh: none of --gpus '$gpu_counts' fits the $visible visible GPU(s)" >&2
  return 2
fi
Pmax=${counts[${#counts[@]}-1]}
nproc_here=$(nproc 2>/dev/null || echo 1)

echo "# $command_line"
date -u +"# %Y-%m-%dT%H:%M:%SZ"
echo "# $visible GPU(s) visible (using ${counts[*]}), smallest memory ${mem_mib} MiB;" \
     "budget ${budget} s; parts $parts; dry-run $dry; cpu-smoke $cpu"
if [[ $cpu -eq 0 && $dry -eq 0 ]]; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader \
    | tee "$work/gpus.txt"
fi
torch_ok=0
if [[ $cpu -eq 0 ]] && python3 -c \
    'import torch; print("# torch", torch.__version__, "CUDA", torch.version.cuda)' 2>/dev/null
then
  torch_ok=1
elif [[ $cpu -eq 1 ]]; then
  echo "# no PyTorch anchors: CPU smoke run"
else
  echo "# no PyTorch anchors: torch not importable"
fi
[[ $dry -eq 1 ]] && torch_ok=1
multigpu="$bin/multigpu_bench"
longattn="$bin/longattn"
have_multigpu=0; have_longattn=0
[[ -x "$multigpu" && $cpu -eq 0 ]] && have_multigpu=1
[[ -x "$longattn" ]] && have_longattn=1
[[ $dry -eq 1 && $cpu -eq 0 ]] && { have_multigpu=1; have_longattn=1; }
yes_no() { [[ $1 -eq 1 ]] && echo yes || echo "no ($2 skipped)"; }
echo "# binaries from $(san "$bin"): multigpu_bench $(yes_no $have_multigpu "parts a, b")," \
     "longattn $(yes_no $have_longattn "parts c, d")"
# Timed runs per case: adaptive (--max-seconds) where multigpu_bench has it, else fewer fixed.
repeats_a=(--repeats 3 --null-repeats 2 --max-seconds 3)
if [[ $have_multigpu -eq 1 && $dry -eq 0 ]] && ! grep -aq -- "max-seconds" "$multigpu"; then
  echo "# multigpu_bench predates --max-seconds (rebuild it): 2 timed runs and 1 without" \
       "transfers per case, and its budget does not look ahead"
  repeats_a=(--repeats 2 --null-repeats 1)
fi

# ---- the plan ---------------------------------------------------------------------------------
plan_parts=()
for p in a b c d; do
  has_part "$p" || continue
  [[ ($p == a || $p == b) && $have_multigpu -eq 0 ]] && continue
  [[ ($p == c || $p == d) && $have_longattn -eq 0 ]] && continue
  plan_parts+=("$p")
done
if (( ${#plan_parts[@]} == 0 )); then
  echo "run_session_4gpu.sh: nothing to run (parts $parts; binaries missing in $(san "$bin"))" >&2
  return 2
fi
run_anchors=$(( anchors == 1 && torch_ok == 1 ? 1 : 0 ))
plan_csv=$(IFS=,; echo "${plan_parts[*]}")
if ! python3 "$helper" plan --gpus "${counts[*]}" --weak "$weak" --strong "$strong" \
    --parts "$plan_csv" --heads "$H" --head-dim "$D" --anchors "$run_anchors" \
    --budget "$budget" --reserve "$reserve" --elapsed "$SECONDS" --part-seconds "$part_seconds" \
    --long-n "$long_n" --long-force "$long_force" --mem-mib "$mem_mib" \
    --shell "$work/plan.sh" --json "$work/plan.json"; then
  echo "run_session_4gpu.sh: the plan failed (see above)" >&2
  return 2
fi
# shellcheck source=/dev/null
source "$work/plan.sh"
steps_log="$work/steps.jsonl"
: > "$steps_log"
step_note=""

# ---- steps ------------------------------------------------------------------------------------
# record NAME PART LIMIT SECONDS RESULT NOTE: one line of the session JSON's step list (a
# pending step_note goes first).
record() {
  local note="${step_note:+$step_note; }$6"
  step_note=""
  note="${note//\"/\'}"
  printf '{"name": "%s", "part": "%s", "limit": %d, "seconds": %d, "result": "%s", ' \
    "$1" "$2" "$3" "$4" "$5" >> "$steps_log"
  printf '"note": "%s"}\n' "$(san "$note")" >> "$steps_log"
}
# The session's clock; a dry run advances it by each step's estimate instead of running it.
clock_offset=0
now() { echo $((SECONDS + clock_offset)); }
# run_step NAME PART LIMIT CMD...: CMD under `timeout LIMIT`; its outcome is recorded, never fatal.
run_step() {
  local name=$1 part=$2 limit=$3
  shift 3
  if (( limit < 10 )); then
    echo "== $name: skipped, ${limit} s left for it"
    record "$name" "$part" "$limit" 0 skipped "no time left"
    return 0
  fi
  echo "== $name (at most ${limit} s, started at $(now) s)"
  echo "   $(san "$*")"
  if [[ $dry -eq 1 ]]; then
    local v="want_$name" took
    took=${!v:-$limit}
    (( took > limit )) && took=$limit
    clock_offset=$((clock_offset + took))
    record "$name" "$part" "$limit" "$took" dry-run "estimate"
    return 0
  fi
  local t0=$SECONDS rc
  timeout --signal=TERM --kill-after=10 "$limit" "$@"
  rc=$?
  local took=$((SECONDS - t0)) result=ok
  case $rc in
    0) ;;
    124|137) result=timeout ;;
    3) result=wrong ;;
    *) result=failed ;;
  esac
  echo "== $name: $result (exit $rc) after ${took} s"
  record "$name" "$part" "$limit" "$took" "$result" "exit $rc"
}
# Part limits: a and b at most as planned, c all but what d is planned, d all that is left; each
# never past the command's budget less the time the later parts are planned.
part_start() {
  local p=$1 later=0 q t
  t=$(now)
  for q in a b c d; do
    [[ "$q" > "$p" ]] || continue
    local v="plan_limit_$q"
    later=$((later + ${!v:-0}))
  done
  local lim=$((budget - reserve - t - later)) planned="plan_limit_$p"
  if [[ $p == a || $p == b ]] && (( lim > ${!planned:-0} )); then lim=${!planned:-0}; fi
  (( lim < 0 )) && lim=0
  part_end=$((t + lim))
  echo "== part $p: ${lim} s (planned ${!planned:-0} s), at ${t} s"
}
# step_limit SELF LATER...: seconds for step SELF. Steps are in order of value: SELF gets its
# estimate if the part still has it, and more when the later steps' estimates leave room.
step_limit() {
  local self="want_$1" rest=0 name v
  shift
  for name in "$@"; do v="want_$name"; rest=$((rest + ${!v:-0})); done
  local avail=$((part_end - $(now)))
  local mine=${!self:-0}
  (( mine > avail )) && mine=$avail
  local lim=$((avail - rest))
  (( lim < mine )) && lim=$mine
  echo $(( lim > 0 ? lim : 0 ))
}
run_mpi() {  # run_mpi NAME PART LIMIT P CMD...
  local name=$1 part=$2 limit=$3 P=$4
  shift 4
  local extra=()
  (( P > nproc_here )) && [[ $cpu -eq 0 ]] && extra=(--oversubscribe)
  run_step "$name" "$part" "$limit" mpirun "${mpiflags[@]}" "${extra[@]}" -np "$P" "$@"
}

ours_a="$work/a_longattn.jsonl"; ours_b="$work/b_longattn.jsonl"; theirs="$work/a_pytorch.jsonl"
: > "$ours_a"; : > "$ours_b"; : > "$theirs"

# ---- a) weak scaling with the anchors ---------------------------------------------------------
if [[ " ${plan_parts[*]} " == *" a "* ]]; then
  part_start a
  a_steps=()
  for P in "${counts[@]}"; do a_steps+=("a_ours_$P"); done
  [[ $run_anchors -eq 1 ]] && for P in "${counts[@]}"; do a_steps+=("a_anchor_$P"); done
  for i in "${!a_steps[@]}"; do
    name=${a_steps[$i]}
    P=${name##*_}
    lim=$(step_limit "$name" "${a_steps[@]:$((i + 1))}")
    if [[ $name == a_ours_* ]]; then
      # Soft budget (no case starts after it, nor one predicted to end after it): the step's
      # limit less the launch (MPI, CUDA contexts, NCCL communicator).
      soft=$((lim - 4 - 2 * P))
      run_mpi "$name" a "$lim" "$P" "$multigpu" --weak "$weak" --causal both --warmup 1 \
        "${repeats_a[@]}" --budget $((soft > 5 ? soft : 5)) --out "$ours_a"
    else
      impls=context_parallel
      check=()
      if [[ $ring_anchor -eq 1 ]]; then
        impls=context_parallel,torch_ring
        (( P > 1 )) && check=(--check)
      fi
      run_step "$name" a "$lim" python3 -m torch.distributed.run --standalone \
        --nproc_per_node "$P" "$here/multigpu/torch_anchors.py" --weak "$weak" --impls "$impls" \
        --warmup 1 --repeats 3 --max-seconds 3 --budget $((lim > 25 ? lim - 15 : lim / 2)) \
        --out "$theirs" "${check[@]}"
    fi
  done
fi

# ---- b) strong scaling ------------------------------------------------------------------------
if [[ " ${plan_parts[*]} " == *" b "* ]]; then
  part_start b
  b_steps=()
  for (( i = ${#counts[@]} - 1; i >= 0; i-- )); do b_steps+=("b_${counts[$i]}"); done
  for i in "${!b_steps[@]}"; do
    name=${b_steps[$i]}
    P=${name##*_}
    lim=$(step_limit "$name" "${b_steps[@]:$((i + 1))}")
    assume=()
    [[ $dry -eq 1 && " ${plan_parts[*]} " == *" a "* ]] && assume=(--assume-weak "$weak")
    lens=$(python3 "$helper" pick-strong --rows "$ours_a" --gpus "$P" --strong "$strong" \
           --limit "$lim" --heads "$H" --head-dim "$D" "${assume[@]}")
    if [[ -z "$lens" ]]; then
      echo "== $name: nothing to run (part a measured these lengths, or none fits ${lim} s)"
      record "$name" b "$lim" 0 skipped "no length left or fitting"
      continue
    fi
    # One timed run per length; the 8K-per-GPU weak row first takes the first-call costs
    # (kernel loading, NCCL connections) and is left out of the results.
    soft=$((lim - 4 - 2 * P))
    run_mpi "$name" b "$lim" "$P" "$multigpu" --weak 8192 --causal causal --strong "$lens" \
      --warmup 0 --repeats 1 --null-repeats 0 --budget $((soft > 5 ? soft : 5)) --out "$ours_b"
  done
fi

# ---- c) the longest dense ring trial, then data-parallel ----------------------------------------
if [[ " ${plan_parts[*]} " == *" c "* ]]; then
  part_start c
  lim=$((part_end - $(now)))
  read -r n_long why < <(python3 "$helper" pick-long --rows "$ours_a" "$ours_b" --gpus "$Pmax" \
    --want "$long_n" --limit "$lim" --mem-mib "$mem_mib" --heads "$H" --head-dim "$D" \
    --force "$long_force")
  echo "== c1: N=${n_long:-0} on $Pmax GPU(s): ${why:-}"
  if (( ${n_long:-0} > 0 )); then
    step_note="N=$n_long"
    run_mpi c1_ring c "$lim" "$Pmax" "$longattn" bench "${device[@]}" --suite maxseq --modes dense \
      --heads "$H" --head-dim "$D" --min-n "$n_long" --max-n "$n_long" --granularity "$n_long" \
      --trial-seconds "$lim" --check-rows 2 --comm-timeout $((lim + 60)) \
      --json "$out_dir/maxseq_ring.json"
  else
    record c1_ring c "$lim" 0 skipped "$why"
  fi
  lim=$((part_end - $(now)))
  if [[ $cpu -eq 1 ]]; then
    dp=(--heads "$H" --head-dim "$D" --min-n 512 --max-n 4096 --granularity 512)
  else
    dp=(--heads "$H" --head-dim "$D" --min-n 262144 --max-n 4194304 --granularity 262144)
  fi
  if (( lim >= 30 )); then
    run_mpi c2_data_parallel c "$lim" "$Pmax" "$longattn" bench "${device[@]}" --suite maxseq \
      --modes data_parallel "${dp[@]}" --trial-seconds $(((lim - 25) * 7 / 10)) \
      --budget $((lim - 20)) --check-rows 2 --comm-timeout $((lim + 60)) \
      --json "$out_dir/maxseq_data_parallel.json"
  else
    echo "== c2_data_parallel: skipped, ${lim} s left"
    record c2_data_parallel c "$lim" 0 skipped "no time left"
  fi
fi

# ---- d) distributed dilated, longest ----------------------------------------------------------
if [[ " ${plan_parts[*]} " == *" d "* ]]; then
  part_start d
  lim=$((part_end - $(now)))
  if [[ $cpu -eq 1 ]]; then
    dl=(--heads "$H" --head-dim "$D" --min-n 4096 --max-n 16384 --granularity 4096)
  else
    dl=(--heads 8 --head-dim 64 --min-n 4194304 --max-n 268435456 --granularity 1048576)
  fi
  run_mpi d_dilated d "$lim" "$Pmax" "$longattn" bench "${device[@]}" --suite maxseq \
    --modes dilated "${dl[@]}" --trial-seconds $(((lim - 15) * 2 / 3)) \
    --budget $((lim > 25 ? lim - 15 : lim / 2)) --check-rows 2 --comm-timeout 60 \
    --json "$out_dir/maxseq_dilated.json"
fi

# ---- merge and summary ------------------------------------------------------------------------
echo "== merge and summary (at $(now) s)"
if [[ $dry -eq 0 ]] && [[ -s "$ours_a" || -s "$ours_b" || -s "$theirs" ]]; then
  python3 "$helper" merge --ours-a "$ours_a" --ours-b "$ours_b" --theirs "$theirs" \
    --strong "$strong" --out "$out_dir/scaling.json" --table "$out_dir/scaling_table.txt" \
    --command "$(san "$command_line")" || echo "== merge failed"
  [[ -s "$out_dir/scaling_table.txt" ]] && cat "$out_dir/scaling_table.txt"
fi
python3 "$helper" summary --steps "$steps_log" --plan "$work/plan.json" \
  --gpu-info "$work/gpus.txt" --out "$out_dir/session_4gpu.json" --out-dir "$out_dir" \
  --command "$(san "$command_line")"
local rc=$?
local names=""
for f in "$out_dir"/*; do [[ -f "$f" ]] && names+="${f##*/} "; done
echo "# wrote in \$OUT: ${names}(${SECONDS} s)"
return $rc
}

main 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
python3 "$helper" sanitize --dir "$out_dir" --replace "$out_dir=\$OUT" "$work=<work>" "$root=" \
  || echo "run_session_4gpu.sh: could not rewrite the paths in $out_dir" >&2
exit "$rc"
