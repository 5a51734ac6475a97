# Commands of runs 406-408 (one H200), 2026-11-29, from the repository root, a scratch directory
# W for their files and $OUT for what came back (the masks kernel_bench wrote left out).
# Binaries unpacked into build-cudabe/bin: run 406 main c92c2ea; run 407 main c92c2ea with
# sort_rows.patch (kernel_bench --sort-rows); run 408 main c92c2ea with both patches
# (LONGATTN_SM90_FWD_STREAM).

# ---- run 406
# Run 406 (1x H200): main c92c2ea. ncu of one forward launch each (64K, H 16, bf16, not causal):
# dense d=128, local_window and random at 10% for d=128 and d=64: time at ncu's locked clock, DRAM
# bytes, L2 hit rate of the loads, tensor pipe activity, issue activity.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
KB=$R/build-cudabe/bin/kernel_bench
M="--metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_hit_rate.pct,lts__t_sector_op_read_hit_rate.pct,sm__pipe_tensor_op_hgmma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed.sum,sm__cycles_active.avg,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__m_xbar2l1tex_read_bytes.sum"
run() {  # name, kernel_bench arguments
  n=$1; shift
  timeout 100 ncu $M -k 'regex:flash_fwd_sm90_kernel' --launch-skip 2 --launch-count 1 $KB "$@" --passes fwd --warmup 1 --warm-ms 0 --repeats 3 --max-seconds 1 --out $n.json > ncu_$n.txt 2>&1
  echo "== $n"; grep -E "flash_fwd_sm90_kernel|gpu__time|dram__bytes|hit_rate|hgmma|inst_executed|cycles_active|issue_active|xbar2l1tex" ncu_$n.txt | sed 's/  */ /g' | cut -c1-150
}
run dense128 --suites dense --dense-n 65536 --dense-d 128
for d in 128 64; do for p in local_window random; do
  run ${p}_d$d --suites sparse --sparse-d $d --densities 0.1 --sparse-patterns $p
done; done
cp -r --parents $(ls | grep -v kernel_bench_masks) $OUT/

# ---- run 407
# Run 407 (1x H200): main c92c2ea with kernel_bench --sort-rows (a measurement option: the sparse
# masks' rows reordered so their listed counts ascend with the row; the forward's items, last
# query tiles first, then come longest first). ncu of the random 10% forward launches sorted (DRAM
# bytes, L2 hits), then A/B sorted against as generated on the random 64K forward at 50/25/10%,
# d=128 and d=64, four rounds, ABBA, 2 s warm-up.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
KB=$R/build-cudabe/bin/kernel_bench
M="--metrics gpu__time_duration.sum,dram__bytes_read.sum,lts__t_sector_op_read_hit_rate.pct,sm__cycles_active.avg"
for d in 128 64; do for s in 0 1; do
  n=random_d${d}_s$s
  timeout 100 ncu $M -k 'regex:flash_fwd_sm90_kernel' --launch-skip 2 --launch-count 1 $KB --suites sparse --sparse-d $d --densities 0.1 --sparse-patterns random $([ $s = 1 ] && echo --sort-rows) --passes fwd --warmup 1 --warm-ms 0 --repeats 3 --max-seconds 1 --out $n.json > ncu_$n.txt 2>&1
  echo "== $n: $(grep -E 'gpu__time|dram__bytes|hit_rate' ncu_$n.txt | sed 's/  */ /g' | tr '\n' ' ')"
done; done
for r in 1 2 3 4; do
  if [ $((r % 2)) = 1 ]; then order="0 1"; else order="1 0"; fi
  for s in $order; do
    timeout 90 $KB --suites sparse --sparse-d 128 --densities 0.5 0.25 0.1 --sparse-patterns random $([ $s = 1 ] && echo --sort-rows) --passes fwd --out ab128_s${s}_r$r.json > ab128_s${s}_r$r.txt 2>&1
    timeout 90 $KB --suites sparse --sparse-d 64 --densities 0.5 0.25 0.1 --sparse-patterns random $([ $s = 1 ] && echo --sort-rows) --passes fwd --out ab64_s${s}_r$r.json > ab64_s${s}_r$r.txt 2>&1
    grep -hE '^sparse' ab128_s${s}_r$r.txt ab64_s${s}_r$r.txt | sed "s/^/s$s $r /" >> ab.log
  done
  tail -12 ab.log | awk '{print $1, $2, $6, $(NF-6)}' | tr '\n' '|'; echo
done
python3 $R/bench/ab_compare.py ab.log --base s0 2>&1 | tail -12
cp -r --parents $(ls | grep -v kernel_bench_masks) $OUT/

# ---- run 408
# Run 408 (1x H200): main c92c2ea with a measurement switch, LONGATTN_SM90_FWD_STREAM=1: the
# Hopper forward's Q loads (TMA, L2 evict-first policy) and o stores (st.global.cs) streamed past
# L2, so that a head's K/V keep it. ncu (DRAM bytes, L2 hits, time at the locked clock) of the
# d=128 64K forward, dense, random and local_window 10%, off and on; then A/B off/on (dense, random and local_window 25% and 10%), four rounds
# ABBA, 2 s warm-up.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
KB=$R/build-cudabe/bin/kernel_bench
M="--metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sector_op_read_hit_rate.pct"
for s in 0 1; do
  for p in random local_window; do
    n=${p}_s$s
    env LONGATTN_SM90_FWD_STREAM=$s timeout 60 ncu $M -k 'regex:flash_fwd_sm90_kernel' --launch-skip 2 --launch-count 1 $KB --suites sparse --sparse-d 128 --densities 0.1 --sparse-patterns $p --passes fwd --warmup 1 --warm-ms 0 --repeats 3 --max-seconds 1 --out $n.json > ncu_$n.txt 2>&1
    echo "== $n: $(grep -E 'gpu__time|dram__bytes|hit_rate' ncu_$n.txt | sed 's/  */ /g' | tr '\n' ' ')"
  done
  n=dense_s$s
  env LONGATTN_SM90_FWD_STREAM=$s timeout 60 ncu $M -k 'regex:flash_fwd_sm90_kernel' --launch-skip 2 --launch-count 1 $KB --suites dense --dense-n 65536 --dense-d 128 --passes fwd --warmup 1 --warm-ms 0 --repeats 3 --max-seconds 1 --out $n.json > ncu_$n.txt 2>&1
  echo "== $n: $(grep -E 'gpu__time|dram__bytes|hit_rate' ncu_$n.txt | sed 's/  */ /g' | tr '\n' ' ')"
done
for r in 1 2 3 4; do
  if [ $((r % 2)) = 1 ]; then order="0 1"; else order="1 0"; fi
  for s in $order; do
    env LONGATTN_SM90_FWD_STREAM=$s timeout 70 $KB --suites dense,sparse --dense-n 65536 --dense-d 128 --sparse-d 128 --densities 0.25 0.1 --sparse-patterns random local_window --passes fwd --out ab_s${s}_r$r.json > ab_s${s}_r$r.txt 2>&1
    grep -hE '^(dense|sparse)' ab_s${s}_r$r.txt | grep -v causal | sed "s/^/s$s $r /" >> ab.log
  done
done
python3 $R/bench/ab_compare.py ab.log --base s0 2>&1 | tail -12
cp -r --parents $(ls | grep -v kernel_bench_masks) $OUT/
