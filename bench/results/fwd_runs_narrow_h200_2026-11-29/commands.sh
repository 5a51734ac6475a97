# Commands of runs 393-396 (one H200; run 395 on 2x H200), 2026-11-29, from the repository
# root, with the binaries of branch wip/fwd-runs-narrow unpacked into build-cudabe/bin (run 393:
# the branch's first commit on main ae643bf, first sizes of its GPU test; runs 394-395: b31addc;
# run 396: ee77089, version 53; run 395's test_multigpu_main: main 0230f46), a scratch directory
# W for its files and $OUT for what came back. The test shards' outputs are joined into
# tests.txt; the masks kernel_bench wrote are left out (it rebuilds them).

# ---- run 393
# Run 393 (1x H200): branch wip/fwd-runs-narrow (narrow first tiles over runs, head dim 128):
# the forward tests over runs and narrow tiles (4 shards); A/B by LONGATTN_SM90_FWD_RUNS_NARROW
# on the block-sparse local_window forward at 64K, d=128, with dense 64K for the speed-up, three
# rounds; memcheck of the new test.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='FlashNarrow.*:FlashRuns.*:*Window*:FlashWide*:FlashTailSplit*'
for i in 0 1 2 3 4 5; do GTEST_TOTAL_SHARDS=6 GTEST_SHARD_INDEX=$i timeout 110 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > t_$i.txt 2>&1 & done
wait
echo "runs: $(grep -h '^\[ RUN' t_*.txt | wc -l), ok: $(grep -h '^\[       OK' t_*.txt | wc -l)"
grep -hE '^\[  FAILED  \] [A-Z]' t_*.txt | head; grep -hE -B2 -A6 'Failure' t_*.txt | head -30
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3; do for s in 0 1; do
  env $([ $s = 0 ] && echo LONGATTN_SM90_FWD_RUNS_NARROW=0) timeout 50 $KB --suites dense,sparse --dense-n 65536 --dense-d 128 --sparse-d 128 --densities 0.5 0.25 0.1 0.05 --sparse-patterns local_window --passes fwd --max-seconds 1.5 --out ab_s${s}_r$r.json > ab_s${s}_r$r.txt 2>&1
  echo "narrow=$s r$r: $(grep -E '^(dense|sparse)' ab_s${s}_r$r.txt | awk '{print $3, $7, $8, $9}' | tr '\n' '|')"
done; done
timeout 60 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.RunsFirstTilesMatchReference' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"

# ---- run 394
# Run 394 (1x H200): branch wip/fwd-runs-narrow b31addc (narrow first tiles over runs, head dim
# 128): the forward tests over runs and narrow tiles (6 shards); memcheck of the new test; A/B by
# LONGATTN_SM90_FWD_RUNS_NARROW on the local_window forward at 64K, d=128 with dense 64K, four
# rounds in ABBA order; the fwd suite (dense 64K + sparse d=128) anchored by FlexAttention, one
# round, only when the tests passed.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); mkdir -p $W; cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='FlashNarrow.*:FlashRuns.*:*Window*:FlashWide*:FlashTailSplit*'
for i in 0 1 2 3 4 5; do GTEST_TOTAL_SHARDS=6 GTEST_SHARD_INDEX=$i timeout 150 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > t_$i.txt 2>&1 & done
wait
RUNS=$(grep -h '^\[ RUN' t_*.txt | wc -l); OK=$(grep -h '^\[       OK' t_*.txt | wc -l)
echo "runs: $RUNS, ok: $OK"
grep -hE '^\[  FAILED  \] [A-Z]' t_*.txt | head; grep -hE -B2 -A6 'Failure' t_*.txt | head -30
grep -h -A1 'RunsFirstTiles' t_*.txt | head -4
timeout 90 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.RunsFirstTilesMatchReference' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3 4; do
  if [ $((r % 2)) = 1 ]; then order="0 1"; else order="1 0"; fi
  for s in $order; do
  env $([ $s = 0 ] && echo LONGATTN_SM90_FWD_RUNS_NARROW=0) timeout 50 $KB --suites dense,sparse --dense-n 65536 --dense-d 128 --sparse-d 128 --densities 0.5 0.25 0.1 0.05 --sparse-patterns local_window --passes fwd --max-seconds 1.5 --out ab_s${s}_r$r.json > ab_s${s}_r$r.txt 2>&1
  echo "narrow=$s r$r: $(grep -E '^(dense|sparse)' ab_s${s}_r$r.txt | awk '{print $3, $7, $8, $9}' | tr '\n' '|')"
done; done
if [ "$RUNS" = "$OK" ] && [ "$RUNS" -gt 0 ]; then
  cd $R && timeout 240 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir $W/kbs128 --anchors flex -- --suites dense,sparse --dense-n 65536 --dense-d 128 --sparse-d 128 --passes fwd > $W/kbs128.log 2>&1; echo "anchored rc $?"
  grep -E '^(dense|sparse)' $W/kbs128/*.txt | head -20
fi

# ---- run 395
# Run 395 (2x H200): the multi-GPU tests of main on 2 ranks; branch wip/fwd-runs-narrow's A/B by
# LONGATTN_SM90_FWD_RUNS_NARROW with the anchored runs' warm-up (2 s a row, not 0.5 s): local_window
# 10% and 5% at 64K, d=128, with dense 64K, four rounds in ABBA order, SM clock and power sampled.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); mkdir -p $W; cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export NCCL_NVLS_ENABLE=0
echo "== multigpu tests (main $(cat $R/.devrun/git_main))"
LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git_main) timeout 200 mpirun --allow-run-as-root --bind-to none -x NCCL_NVLS_ENABLE -x LONGATTN_GIT_DESCRIBE -np 2 $R/build-cudabe/bin/test_multigpu_main > multigpu_tests.txt 2>&1; echo "rc $?"
grep -cE '^\[       OK' multigpu_tests.txt; grep -E '^\[  (PASSED|FAILED)' multigpu_tests.txt | head -8
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
nvidia-smi -i 0 --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu --format=csv -lms 200 > smi.csv 2>&1 &
SMI=$!
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3 4; do
  if [ $((r % 2)) = 1 ]; then order="0 1"; else order="1 0"; fi
  for s in $order; do
  date +%T.%N > ab_s${s}_r$r.start
  env CUDA_VISIBLE_DEVICES=0 $([ $s = 0 ] && echo LONGATTN_SM90_FWD_RUNS_NARROW=0) timeout 60 $KB --suites dense,sparse --dense-n 65536 --dense-d 128 --sparse-d 128 --densities 0.1 0.05 --sparse-patterns local_window --passes fwd --out ab_s${s}_r$r.json > ab_s${s}_r$r.txt 2>&1
  echo "narrow=$s r$r: $(grep -E '^(dense|sparse)' ab_s${s}_r$r.txt | awk '{print $3, $7, $8, $9}' | tr '\n' '|')"
done; done
kill $SMI

# ---- run 396
# Run 396 (1x H200): version 53 (narrow first tiles over runs, branch wip/fwd-runs-narrow rebased
# on main): the whole GPU test suite, sixteen shards; then the forward suite at head dim 128
# (dense 64K, block-sparse 64K) anchored by FlexAttention, three rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); mkdir -p $W; cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 300 $R/build-cudabe/bin/test_gpu > all_$i.txt 2>&1 & done
wait
echo "ok $(cat all_*.txt | grep -cE '^\[       OK') run $(cat all_*.txt | grep -cE '^\[ RUN') failed $(cat all_*.txt | grep -cE '^\[  FAILED  \] [A-Z]')"
grep -hE '^\[  FAILED  \] [A-Z]' all_*.txt | head
cd $R && timeout 250 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir $W/kbs128 --rounds 3 --anchors flex -- --suites dense,sparse --dense-n 65536 --dense-d 128 --sparse-d 128 --passes fwd > $W/kbs128.log 2>&1; echo "kbs128 rc $?"
grep -E '^(dense|sparse)' $W/kbs128/kernel_bench_table.txt | head -14
