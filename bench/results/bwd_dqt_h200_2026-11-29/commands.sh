# Commands of runs 370-378 (one H200 each, 2026-11-29). The scripts ran from the repository root with the
# binaries unpacked to build-cudabe/bin (the candidate), build-ab0/bin (the A/B baseline: a measurement build,
# -DLONGATTN_SM90_MEASURE_DEFS=... -DLONGATTN_SM90_MEASURE_GLOB=..., see each run) and, in run 370, build-fake/bin.
# Run 370: build-ab0 = LONGATTN_SM90_BWD_DS_STS=1 on flash_bwd_* (dS^T by 32-bit stores; since removed), build-fake =
# LONGATTN_SM90_BWD_DQ_STSM_FAKE=1 on *_d128_m80* (a measurement-only build, not committed: wrong sums). Runs
# 371-375: build-ab0 = LONGATTN_SM90_BWD_DQ_T=0 on flash_[bs][wm]* (the committed code with the transposed
# accumulator off). Runs 371-372 ran first layouts of the accumulator (not committed: [B H][D][rows] with 16-query
# tensor boxes; [B H][rows/16][D][16]), run 373 the tile-major layout with a first conversion, 374-375 the committed
# conversion (374 with LONGATTN_SM90_BWD_DQ_T_MAP=1, a tensor-map reduce of the same boxes, since removed).

# ---- run 370
# Run 370 (1x H200): dS^T stored by stmatrix in every backward kernel (main binary), 92cd0eb's
# host plan of the pieces; every GPU test that runs a backward in eight shards. Then A/B, two
# rounds, --grads write: kb_ab0 (dS^T by 32-bit stores, as before), kernel_bench (stmatrix),
# kb_fake (stmatrix + the d=128 m80 dQ^T staged by stmatrix untransposed: wrong sums, an upper
# bound for a transposed dq accumulator).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 270 build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
timeout 270 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardOverwritesGradients' > memcheck.txt 2>&1 &
wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' bwd_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l)"
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2; do for bin in kb_ab0 kernel_bench kb_fake; do for d in 128 64; do
  [ $bin = kb_fake ] && [ $d = 64 ] && continue
  timeout 50 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || { [ $b = kb_fake ] && echo build-fake/bin/kernel_bench || echo build-cudabe/bin/kernel_bench; }) --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --grads write --max-seconds 2 --out ab_${bin}_d${d}_r$r.json > ab_${bin}_d${d}_r$r.txt 2>&1
  echo "$bin d$d r$r: $(grep -E '^dense' ab_${bin}_d${d}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done; done
tar czf ./r370.tgz *.txt *.json

# ---- run 371
# Run 371 (1x H200): the transposed dQ accumulator of the d=128 writing kernel (dQ^T staged by
# stmatrix as it stands, dq written from it after the launch). Tests: every GPU test that runs a
# backward (eight shards) with the new CudaAttention.BackwardDqTransposed; memcheck on it. A/B,
# three rounds, --grads write, d=128: kb_ab0 (LONGATTN_SM90_BWD_DQ_T=0: dQ^T transposed into dq's
# rows, the accumulator row-major) against kernel_bench.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 280 build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
timeout 280 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > memcheck.txt 2>&1 &
wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' bwd_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
grep -hE -B2 -A6 'Failure' bwd_*.txt | head -60
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l)"
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for bin in kb_ab0 kernel_bench; do
  timeout 50 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || { [ $b = kb_fake ] && echo build-fake/bin/kernel_bench || echo build-cudabe/bin/kernel_bench; }) --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_${bin}_r$r.json > ab_${bin}_r$r.txt 2>&1
  echo "$bin r$r: $(grep -E '^dense' ab_${bin}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
tar czf ./r371.tgz *.txt *.json

# ---- run 372
# Run 372 (1x H200): the transposed dQ accumulator in blocks of [D][16 queries] per group of 16
# (a box of 64 columns 4 KB in one piece; run 371's [D][rows] layout put each box's 64 rows of 64
# bytes 16 KB apart and ran 8-9% slower). Tests: CudaAttention.BackwardDqTransposed and
# BackwardOverwritesGradients, memcheck on the first. A/B, three rounds, --grads write, d=128:
# kb_ab0 (LONGATTN_SM90_BWD_DQ_T=0) against kernel_bench; then anchored against cuDNN, two rounds.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 200 build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed:CudaAttention.BackwardOverwritesGradients' > tests.txt 2>&1 &
timeout 200 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > memcheck.txt 2>&1 &
wait
echo "tests: $(grep -E '^\[  PASSED|^\[  FAILED|OK \]' tests.txt | tr '\n' ' ')"
grep -hE -A6 'Failure' tests.txt | head -30
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for bin in kb_ab0 kernel_bench; do
  timeout 50 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || { [ $b = kb_fake ] && echo build-fake/bin/kernel_bench || echo build-cudabe/bin/kernel_bench; }) --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_${bin}_r$r.json > ab_${bin}_r$r.txt 2>&1
  echo "$bin r$r: $(grep -E '^dense' ab_${bin}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
timeout 200 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kbw128 --rounds 2 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 > kbw128.log 2>&1; echo "kbw128 rc $?"
tail -16 kbw128/kernel_bench_table.txt
tar czf ./r372.tgz *.txt *.json *.log kbw128

# ---- run 373
# Run 373 (1x H200): the transposed dQ accumulator in tile-major blocks of [D][80 slots] (a
# warpgroup's 64 columns of a tile 20 KB in one piece, added by one 1-D bulk reduce; runs 371-372
# with 5 tensor reduces of 16 x 64 boxes ran 8-10% slower). Tests: CudaAttention.BackwardDqTransposed and
# BackwardOverwritesGradients, memcheck on the first. A/B, three rounds, --grads write, d=128:
# kb_ab0 (LONGATTN_SM90_BWD_DQ_T=0) against kernel_bench; then anchored against cuDNN, two rounds.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 200 build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed:CudaAttention.BackwardOverwritesGradients' > tests.txt 2>&1 &
timeout 200 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > memcheck.txt 2>&1 &
wait
echo "tests: $(grep -E '^\[  PASSED|^\[  FAILED|OK \]' tests.txt | tr '\n' ' ')"
grep -hE -A6 'Failure' tests.txt | head -30
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for bin in kb_ab0 kernel_bench; do
  timeout 50 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || { [ $b = kb_fake ] && echo build-fake/bin/kernel_bench || echo build-cudabe/bin/kernel_bench; }) --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_${bin}_r$r.json > ab_${bin}_r$r.txt 2>&1
  echo "$bin r$r: $(grep -E '^dense' ab_${bin}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
timeout 200 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kbw128 --rounds 2 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 > kbw128.log 2>&1; echo "kbw128 rc $?"
tail -16 kbw128/kernel_bench_table.txt
tar czf ./r373.tgz *.txt *.json *.log kbw128

# ---- run 374
# Run 374 (1x H200): the tile-major transposed dQ accumulator with the conversion into dq rewritten
# (run 373's converted one 4-byte load at a time). Tests: CudaAttention.BackwardDqTransposed (also
# with LONGATTN_SM90_BWD_DQ_T_MAP=1) and BackwardOverwritesGradients. A/B, three rounds,
# --grads write, d=128: kb_ab0 (LONGATTN_SM90_BWD_DQ_T=0), kernel_bench (bulk reduce), kernel_bench
# with LONGATTN_SM90_BWD_DQ_T_MAP=1 (tensor reduce of the same boxes). Then ncu kernel times at
# 4K and 16K, kb_ab0 and kernel_bench.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 200 build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed:CudaAttention.BackwardOverwritesGradients' > tests.txt 2>&1 &
LONGATTN_SM90_BWD_DQ_T_MAP=1 timeout 200 build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > tests_map.txt 2>&1 &
wait
for f in tests tests_map; do echo "$f: $(grep -E '^\[  PASSED|^\[  FAILED|OK \]' $f.txt | tr '\n' ' ')"; done
grep -hE -A6 'Failure' tests*.txt | head -30
for r in 1 2 3; do for arm in ab0 bulk map; do
  bin=kernel_bench; [ $arm = ab0 ] && bin=kb_ab0; m=0; [ $arm = map ] && m=1
  LONGATTN_SM90_BWD_DQ_T_MAP=$m timeout 50 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || { [ $b = kb_fake ] && echo build-fake/bin/kernel_bench || echo build-cudabe/bin/kernel_bench; }) --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_${arm}_r$r.json > ab_${arm}_r$r.txt 2>&1
  echo "$arm r$r: $(grep -E '^dense' ab_${arm}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
M="--metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,lts__t_sectors_op_red.sum"
for n in 4096 16384; do for bin in kb_ab0 kernel_bench; do
  timeout 60 ncu $M -k 'regex:^(?!.*(randn|fill_kernel)).*' --launch-skip 4 --launch-count 8 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || { [ $b = kb_fake ] && echo build-fake/bin/kernel_bench || echo build-cudabe/bin/kernel_bench; }) --suites dense --dense-n $n --dense-d 128 --passes bwd --grads write --warmup 1 --warm-ms 0 --repeats 2 --max-seconds 1 --out n.json > ncu_${bin}_$n.txt 2>&1
  echo "== $bin $n"; grep -E "^  [a-zA-Z_]|gpu__time_duration|dram__bytes|op_red" ncu_${bin}_$n.txt | cut -c1-150 | head -40
done; done
tar czf ./r374.tgz *.txt *.json

# ---- run 375
# Run 375 (1x H200; no 2-GPU kind lent at the call): every GPU test that runs a backward (eight
# shards), memcheck on BackwardDqTransposed, then the A/B of the transposed dQ accumulator with
# the pipelined conversion (three rounds, --grads write, d=128: kb_ab0 = LONGATTN_SM90_BWD_DQ_T=0) and the anchored run against
# cuDNN (two rounds).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
(
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 280 build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
wait
)
timeout 80 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > memcheck.txt 2>&1
(
for r in 1 2 3; do for bin in kb_ab0 kernel_bench; do
  timeout 50 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || { [ $b = kb_fake ] && echo build-fake/bin/kernel_bench || echo build-cudabe/bin/kernel_bench; }) --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_${bin}_r$r.json > ab_${bin}_r$r.txt 2>&1
done; done
timeout 200 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kbw128 --rounds 2 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 > kbw128.log 2>&1; echo "kbw128 rc $?" > kbw128.rc
)
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' bwd_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l)"
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for bin in kb_ab0 kernel_bench; do echo "$bin r$r: $(grep -E '^dense' ab_${bin}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"; done; done
cat kbw128.rc; tail -16 kbw128/kernel_bench_table.txt
tar czf ./r375.tgz *.txt *.json *.log *.rc kbw128

# ---- run 376
# Run 376 (1x H200): version 50 (27616f5) as committed. ncu kernel times of the d=128 4K and 16K
# backward in SDPA's configuration (the conversion of the transposed accumulator beside the main
# kernel); anchored against cuDNN, two rounds: d=128 adding into fp32 (kernel_bench's default,
# which version 50 leaves on dq's rows) and d=64 in SDPA's configuration (dS^T by stmatrix).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
M="--metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum"
for n in 4096 16384; do
  timeout 60 ncu $M -k 'regex:^(?!.*(randn|fill_kernel)).*' --launch-skip 4 --launch-count 8 build-cudabe/bin/kernel_bench --suites dense --dense-n $n --dense-d 128 --passes bwd --grads write --warmup 1 --warm-ms 0 --repeats 2 --max-seconds 1 --out n.json > ncu_$n.txt 2>&1
  echo "== $n"; grep -E "^  [a-zA-Z_]|gpu__time_duration" ncu_$n.txt | cut -c1-110 | head -24
done
timeout 150 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kb128 --rounds 2 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --max-seconds 2 > kb128.log 2>&1; echo "kb128 rc $?"
tail -9 kb128/kernel_bench_table.txt
timeout 150 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kbw64 --rounds 2 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 64 --passes bwd --grads write --max-seconds 2 > kbw64.log 2>&1; echo "kbw64 rc $?"
tail -9 kbw64/kernel_bench_table.txt
tar czf ./r376.tgz *.txt *.log kb128 kbw64

# ---- run 377 (build-cudabe: version 50 with the conversion under __launch_bounds__(256, 4) and its write loop unrolled
# twice, not committed: no faster)
# Run 377 (1x H200): the conversion of the transposed dQ accumulator held to 64 registers (it took
# 170, one CTA an SM; now four). Tests: CudaAttention.BackwardDqTransposed and
# BackwardOverwritesGradients; ncu kernel times at 4K and 16K; A/B, three rounds, --grads write,
# d=128: kb_ab0 (LONGATTN_SM90_BWD_DQ_T=0) against kernel_bench.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 100 build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed:CudaAttention.BackwardOverwritesGradients' > tests.txt 2>&1
echo "tests: $(grep -E '^\[  PASSED|^\[  FAILED|OK \]' tests.txt | tr '\n' ' ')"
grep -hE -A6 'Failure' tests.txt | head -20
M="--metrics gpu__time_duration.sum"
for n in 4096 16384; do
  timeout 60 ncu $M -k 'regex:dq_from' --launch-skip 1 --launch-count 3 build-cudabe/bin/kernel_bench --suites dense --dense-n $n --dense-d 128 --passes bwd --grads write --warmup 1 --warm-ms 0 --repeats 2 --max-seconds 1 --out n.json > ncu_$n.txt 2>&1
  echo "== $n: $(grep -E 'gpu__time_duration' ncu_$n.txt | awk '{print $3}' | tr '\n' ' ')"
done
for r in 1 2 3; do for bin in kb_ab0 kernel_bench; do
  timeout 50 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || echo build-cudabe/bin/kernel_bench) --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_${bin}_r$r.json > ab_${bin}_r$r.txt 2>&1
  echo "$bin r$r: $(grep -E '^dense' ab_${bin}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
tar czf ./r377.tgz *.txt *.json

# ---- run 378 (build-cudabe: the committed conversion without shared memory)
# Run 378 (1x H200): the conversion of the transposed dQ accumulator without shared memory (a warp
# reads 8 queries x 64 columns as whole sectors, writes rows whole). Tests: BackwardDqTransposed and
# BackwardOverwritesGradients, memcheck on the first; ncu kernel times at 4K and 16K; A/B, three rounds, --grads write,
# d=128: kb_ab0 (LONGATTN_SM90_BWD_DQ_T=0) against kernel_bench.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 100 build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed:CudaAttention.BackwardOverwritesGradients' > tests.txt 2>&1
echo "tests: $(grep -E '^\[  PASSED|^\[  FAILED|OK \]' tests.txt | tr '\n' ' ')"
grep -hE -A6 'Failure' tests.txt | head -20
timeout 80 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
M="--metrics gpu__time_duration.sum"
for n in 4096 16384; do
  timeout 60 ncu $M -k 'regex:dq_from' --launch-skip 1 --launch-count 3 build-cudabe/bin/kernel_bench --suites dense --dense-n $n --dense-d 128 --passes bwd --grads write --warmup 1 --warm-ms 0 --repeats 2 --max-seconds 1 --out n.json > ncu_$n.txt 2>&1
  echo "== $n: $(grep -E 'gpu__time_duration' ncu_$n.txt | awk '{print $3}' | tr '\n' ' ')"
done
for r in 1 2 3; do for bin in kb_ab0 kernel_bench; do
  timeout 50 $(b=$bin; [ $b = kb_ab0 ] && echo build-ab0/bin/kernel_bench || echo build-cudabe/bin/kernel_bench) --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_${bin}_r$r.json > ab_${bin}_r$r.txt 2>&1
  echo "$bin r$r: $(grep -E '^dense' ab_${bin}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
tar czf ./r378.tgz *.txt *.json
