# Commands of runs 367-369 (one H200 each, 2026-11-29). The scripts ran from the repository root with the
# binaries (kernel_bench, test_gpu) unpacked to build-cudabe/bin: run 367 a first build of version 49 whose merge
# read the other pieces' sums one element at a time (not merged); runs 368-369 version 49 as committed.

# ---- run 367
# Run 367 (1x H200): the backward's last round split with dk and dv of the 16-bit input dtype (each
# piece stores its fp32 sums, the last to finish adds them in piece order; LONGATTN_SM90_BWD_PIECES).
# Tests: FlashBwdTailSplit (16-bit cases now split), CudaAttention.BackwardOverwritesGradients (write ==
# add into zeros bit for bit), the by-position backward suites; memcheck and racecheck of FlashBwdTailSplit;
# then A/B in one binary, PIECES=1 / 0, three rounds, dense bwd --grads write (SDPA's configuration) d=128
# and d=64 at 4K/8K/16K.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
F='FlashBwdTailSplit.*:CudaAttention.BackwardOverwritesGradients:FlashM80*:FlashM128*:FlashDkvTma*:CudaAttention.Backward*'
for i in 0 1 2 3; do GTEST_TOTAL_SHARDS=4 GTEST_SHARD_INDEX=$i timeout 230 build-cudabe/bin/test_gpu --gtest_filter="$F" > tests_$i.txt 2>&1 & done
timeout 230 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashBwdTailSplit.*' > memcheck.txt 2>&1 &
timeout 230 compute-sanitizer --tool racecheck build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardOverwritesGradients' > racecheck.txt 2>&1 &
wait
for i in 0 1 2 3; do echo "shard $i: $(grep -cE '^\[       OK' tests_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' tests_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' tests_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]|Failure|Expected|Which is|error' tests_*.txt | head -20
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
echo "racecheck: $(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY|PASSED|FAILED' racecheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for s in 1 0; do for d in 128 64; do
  LONGATTN_SM90_BWD_PIECES=$s timeout 60 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --grads write --max-seconds 2 --out ab_p${s}_d${d}_r$r.json > ab_p${s}_d${d}_r$r.txt 2>&1
  echo "pieces=$s d$d r$r: $(grep -E '^dense' ab_p${s}_d${d}_r$r.txt | grep full | awk '{print $3, $8}' | tr '\n' '|')"
done; done; done
tar czf ./r367.tgz *.txt *.json

# ---- run 368
# Run 368 (1x H200): version 49 candidate, the 16-bit pieces' merge reading every piece's sums in
# batches (run 367's read one L2 round trip per element). Tests: FlashBwdTailSplit,
# CudaAttention.BackwardOverwritesGradients (and under memcheck); A/B in one binary, PIECES=1 / 0,
# two rounds, --grads write d=128 and d=64 4K/8K/16K; then anchored against cuDNN, two rounds, d=128
# --grads write.
set -u
chmod +x build-cudabe/bin/*
R=$PWD
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 200 build-cudabe/bin/test_gpu --gtest_filter='FlashBwdTailSplit.*' > tests_tail.txt 2>&1 &
timeout 200 build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardOverwritesGradients:CudaAttention.BackwardAccumulates*' > tests_over.txt 2>&1 &
timeout 200 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardOverwritesGradients' > memcheck.txt 2>&1 &
wait
for f in tests_tail tests_over; do echo "$f: $(grep -E '^\[  PASSED|^\[  FAILED|OK \]' $f.txt | tr '\n' ' ')"; done
grep -hE 'Failure|Expected|Which is' tests_*.txt | head -20
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2; do for s in 1 0; do for d in 128 64; do
  LONGATTN_SM90_BWD_PIECES=$s timeout 60 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --grads write --max-seconds 2 --out ab_p${s}_d${d}_r$r.json > ab_p${s}_d${d}_r$r.txt 2>&1
  echo "pieces=$s d$d r$r: $(grep -E '^dense' ab_p${s}_d${d}_r$r.txt | grep full | awk '{print $3, $8}' | tr '\n' '|')"
done; done; done
timeout 200 bash $R/bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kbw128 --rounds 2 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 > kbw128.log 2>&1; echo "kbw128 rc $?"
tail -16 kbw128/kernel_bench_table.txt
tar czf ./r368.tgz *.txt *.json *.log kbw128

# ---- run 369
# Run 369 (1x H200): version 49 (the 16-bit pieces), every GPU test that runs a backward, in eight
# shards, each shard's log written to $OUT as it runs.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > ./gpu.txt
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 270 build-cudabe/bin/test_gpu --gtest_filter="$F" > ./bwd_$i.txt 2>&1 & done; wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' ./bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' ./bwd_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' ./bwd_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' ./bwd_*.txt | head
grep -h "^\[ RUN" ./bwd_*.txt | wc -l
