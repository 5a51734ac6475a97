# Commands of runs 386-392 (one H200 each, 2026-11-29). Each script ran from the repository root,
# with the binaries of the build under test unpacked into build-cudabe/bin, a scratch directory W
# for its files and $OUT for what came back. The sixteen test shards' outputs are joined into
# bwd_tests.txt (gpu_tests_all.txt in run 390).
# Run 386: main 3fafac4's test_gpu (as test_gpu_main) and the first build of the TMA stores of
# dk/dv (ce29782, the pending flag in shared memory). Run 387: the flag in a register (the
# code of c7937d5). Runs 388-389: main c7937d5. Run 390: main bb39197 (the same kernels). Run
# 391: the test of gradient views with 16-byte strides (committed after it). Run 392: main b29f8bb
# plus dkv_store_d64_untaken.patch (head dim 64's writing kernel storing dk/dv by TMA; not merged).

# ---- run 386
# Run 386 (1x H200): main 3fafac4's two refactored tests; branch wip/bwd-dkv-tma-store (TMA stores
# of 16-bit dk/dv in the d=128 writing kernel): every backward GPU test (16 shards), memcheck and
# racecheck of BackwardOverwritesGradients; A/B by LONGATTN_SM90_DKV_STORE at d=128 4K/8K, 3 rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
timeout 60 $R/build-cudabe/bin/test_gpu_main --gtest_filter='CudaAttention.BackwardDqTransposed:CudaAttention.BackwardOverwritesGradients' > main_two.txt 2>&1
echo "main two: $(grep -E '^\[  PASSED|^\[  FAILED' main_two.txt | tr '\n' ' ')"
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 240 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
wait
for i in $(seq 0 15); do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed"; done | grep -v ' 0 failed' 
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
grep -hE -B2 -A6 'Failure' bwd_*.txt | head -40
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l), ok: $(grep -h '^\[       OK' bwd_*.txt | wc -l)"
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3; do for s in 0 1; do
  LONGATTN_SM90_DKV_STORE=$s timeout 40 $KB --suites dense --dense-n 4096 8192 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_s${s}_r$r.json > ab_s${s}_r$r.txt 2>&1
  echo "store=$s r$r: $(grep -E '^dense' ab_s${s}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
timeout 90 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardOverwritesGradients' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
timeout 150 compute-sanitizer --tool racecheck $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardOverwritesGradients' > racecheck.txt 2>&1
echo "racecheck: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED' racecheck.txt | tail -3 | tr '\n' ' ')"
echo done

# ---- run 387
# Run 387 (1x H200): branch wip/bwd-dkv-tma-store with the pending flag in a register: every
# backward GPU test (16 shards), memcheck of BackwardOverwritesGradients; A/B by
# LONGATTN_SM90_DKV_STORE at d=128 4K/8K --grads write, 3 rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 240 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
wait
for i in $(seq 0 15); do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed"; done | grep -v ' 0 failed'
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
grep -hE -B2 -A6 'Failure' bwd_*.txt | head -40
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l), ok: $(grep -h '^\[       OK' bwd_*.txt | wc -l)"
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3; do for s in 0 1; do
  LONGATTN_SM90_DKV_STORE=$s timeout 40 $KB --suites dense --dense-n 4096 8192 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_s${s}_r$r.json > ab_s${s}_r$r.txt 2>&1
  echo "store=$s r$r: $(grep -E '^dense' ab_s${s}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
timeout 90 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardOverwritesGradients' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
echo done

# ---- run 388
# Run 388 (1x H200): c7937d5 (16-bit dk/dv of whole works by TMA stores) anchored against cuDNN in
# SDPA's configuration (--grads write), d=128 4K-16K, causal and not, three rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
W=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > $W/gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat .devrun/git)
timeout 280 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir $W/kbw128 --rounds 3 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 > $W/kbw128.log 2>&1; echo "kbw128 rc $?"
tail -9 $W/kbw128/kernel_bench_table.txt
echo done

# ---- run 389
# Run 389 (1x H200): c7937d5's d=128 backward (TMA stores of dk/dv) at 32K and 64K in SDPA's configuration
# (--grads write), causal and not, anchored against cuDNN, two rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
W=$(mktemp -d)
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > $W/gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat .devrun/git)
timeout 190 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir $W/kbw128l --rounds 2 --anchors sdpa_cudnn -- --suites dense --dense-n 32768 65536 --dense-d 128 --passes bwd --grads write --max-seconds 1.5 > $W/kbw128l.log 2>&1; echo "kbw128l rc $?"
tail -8 $W/kbw128l/kernel_bench_table.txt
cd $W; tar czf $OUT/r389.tgz *.txt *.log kbw128l

# ---- run 390
# Run 390 (1x H200): the whole GPU test suite on main (version 52's kernels), sixteen shards; then
# the d=128 forward (kernels of version 47) anchored against cuDNN again, 4K-16K, three rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 380 $R/build-cudabe/bin/test_gpu > all_$i.txt 2>&1 & done
wait
for i in $(seq 0 15); do echo "shard $i: $(grep -cE '^\[       OK' all_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' all_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' all_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' all_*.txt | head
grep -hE -B2 -A6 'Failure' all_*.txt | head -30
echo "runs: $(grep -h '^\[ RUN' all_*.txt | wc -l), ok: $(grep -h '^\[       OK' all_*.txt | wc -l), skipped: $(grep -h '^\[  SKIPPED' all_*.txt | wc -l)"
cd $R
timeout 150 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir $W/kbf128 --rounds 3 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes fwd --max-seconds 2 > $W/kbf128.log 2>&1; echo "kbf128 rc $?"
tail -9 $W/kbf128/kernel_bench_table.txt

# ---- run 391
# Run 391 (1x H200): the new test of gradient views with 16-byte strides (TMA stores through maps
# of those strides), BackwardOverwritesGradients and BackwardDqTransposed; memcheck of the new test.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 120 $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardWritesGradientViewsWithTmaStrides:CudaAttention.BackwardOverwritesGradients:CudaAttention.BackwardDqTransposed' > tests.txt 2>&1
grep -E '^\[       OK|^\[  FAILED|^\[  PASSED' tests.txt; grep -B2 -A8 Failure tests.txt | head -40
timeout 150 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardWritesGradientViewsWithTmaStrides' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"

# ---- run 392
# Run 392 (1x H200): branch wip/bwd-dkv-tma-store-d64 (head dim 64's writing kernel stores dk/dv
# by TMA): every backward GPU test (16 shards), memcheck of the two gradient-writing tests; A/B by
# LONGATTN_SM90_DKV_STORE at d=64 4K/8K --grads write, 3 rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 240 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
wait
for i in $(seq 0 15); do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed"; done | grep -v ' 0 failed'
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
grep -hE -B2 -A6 'Failure' bwd_*.txt | head -40
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l), ok: $(grep -h '^\[       OK' bwd_*.txt | wc -l)"
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3; do for s in 0 1; do
  LONGATTN_SM90_DKV_STORE=$s timeout 40 $KB --suites dense --dense-n 4096 8192 --dense-d 64 --passes bwd --grads write --max-seconds 2 --out ab_s${s}_r$r.json > ab_s${s}_r$r.txt 2>&1
  echo "store=$s r$r: $(grep -E '^dense' ab_s${s}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
timeout 90 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardOverwritesGradients:CudaAttention.BackwardWritesGradientViewsWithTmaStrides' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
