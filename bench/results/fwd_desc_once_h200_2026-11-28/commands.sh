# Commands of runs 326-329, 331 and 333 (one H200 each, 2026-11-28). Run 326: main 01b0f47's kernel_bench.
# Runs 327-328: kernel_bench_old = main 01b0f47, kernel_bench_new and test_gpu = the working tree
# (run 327: descriptors made once at both head dims; run 328: at head dim 128 only, as committed).

# ---- run 326
# Run 326 (1x H200): the instruction mix by SASS opcode (ncu) of main's forward at d=128 dense
# non-causal 4K and 16K (batch 1, 16 heads) and of the listed d=64 forward on random 50% 64K.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
M="--metrics sass__inst_executed_per_opcode,smsp__inst_executed.sum,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum --print-metric-instances details"
for n in 4096 16384; do
  timeout 100 ncu $M -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench --suites dense --dense-n $n --dense-d 128 --passes fwd --warmup 1 --warm-ms 0 --repeats 1 --max-seconds 1 --out n.json > ops_d128_$n.txt 2>&1; echo "d128 $n rc $?"
done
timeout 100 ncu $M -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench --suites sparse --sparse-d 64 --sparse-patterns random --densities 0.5 --passes fwd --warmup 1 --warm-ms 0 --repeats 1 --max-seconds 1 --mask-dir masks --out n.json > ops_d64_random.txt 2>&1; echo "d64 random rc $?"
(cd . && tar czf $OUT/r326.tgz ops_*.txt)

# ---- run 327
# Run 327 (1x H200): the forward's wgmma descriptors made once (desc_at) against main 01b0f47:
# the forward tests, then an A/B (old, new, old, new) on dense d=64/128 4K and 16K and on
# block-sparse 64K d=64 random and local_window 10%.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 200 build-cudabe/bin/test_gpu --gtest_filter='FlashCase.Forward*:FlashWide.*:FlashRuns.*:FlashGather.*:FlashMargin.*:FlashTailSplit.*:FlashPersistent.ManyItemsPerCta:FlashOVec.*' > tests.txt 2>&1; echo tests rc $?; grep -E '^\[  (PASSED|FAILED)|FAILED' tests.txt | head -20
for r in 1 2; do for v in old new; do
  timeout 80 build-cudabe/bin/kernel_bench_$v --suites dense --dense-n 4096 16384 --dense-d 64 128 --passes fwd --max-seconds 2 --out d_${v}_$r.json > d_${v}_$r.txt 2>&1; echo "== dense $v $r rc $?"
  grep -E '^dense' d_${v}_$r.txt | awk '{print $4, $6, $7, $8, $9}'
  timeout 60 build-cudabe/bin/kernel_bench_$v --suites sparse --sparse-d 64 --sparse-patterns random local_window --densities 0.1 --passes fwd --max-seconds 2 --mask-dir masks --out s_${v}_$r.json > s_${v}_$r.txt 2>&1; echo "== sparse $v $r rc $?"
  grep -E '^sparse' s_${v}_$r.txt | awk '{print $3, $8, $9}'
done; done
(cd . && tar czf $OUT/r327.tgz *.txt *.json)

# ---- run 328
# Run 328 (1x H200): the forward's descriptors made once at head dim 128 only: the forward tests
# (six gtest shards at once), then an A/B (old = main 01b0f47, new; two rounds) on dense d=128
# 4K and 8K and block-sparse 64K d=128 random 10%.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
F='*FlashCase.Forward*:FlashMargin.*:FlashWide.*:FlashGather.*:FlashOVec.*:FlashKernels.*'
for i in 0 1 2 3 4 5; do GTEST_TOTAL_SHARDS=6 GTEST_SHARD_INDEX=$i timeout 280 build-cudabe/bin/test_gpu --gtest_filter="$F" > tests_$i.txt 2>&1 & done; wait
for i in 0 1 2 3 4 5; do echo "shard $i: $(grep -cE '^\[       OK' tests_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' tests_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' tests_$i.txt)"; done
for r in 1 2; do for v in old new; do
  timeout 60 build-cudabe/bin/kernel_bench_$v --suites dense --dense-n 4096 8192 --dense-d 128 --passes fwd --max-seconds 2 --out d_${v}_$r.json > d_${v}_$r.txt 2>&1; echo "== dense $v $r rc $?"
  grep -E '^dense' d_${v}_$r.txt | awk '{print $4, $6, $7, $8, $9}'
  timeout 40 build-cudabe/bin/kernel_bench_$v --suites sparse --sparse-d 128 --sparse-patterns random --densities 0.1 --passes fwd --max-seconds 2 --mask-dir masks --out s_${v}_$r.json > s_${v}_$r.txt 2>&1; echo "== sparse $v $r rc $?"
  grep -E '^sparse' s_${v}_$r.txt | awk '{print $3, $8, $9}'
done; done
(cd . && tar czf $OUT/r328.tgz *.txt *.json)

# ---- run 329 (main 205cf06's kernel_bench)
# Run 329 (1x H200): the backward kernels' instruction mix by SASS opcode and pipe use (ncu) at
# d=128 dense non-causal 4K and 16K (batch 1, 16 heads), main 205cf06.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
M="--metrics sass__inst_executed_per_opcode,smsp__inst_executed.sum,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,sm__cycles_elapsed.avg,smsp__issue_active.avg.pct_of_peak_sustained_active --print-metric-instances details"
for n in 4096 16384; do
  timeout 120 ncu $M -k regex:flash_bwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench --suites dense --dense-n $n --dense-d 128 --passes bwd --warmup 1 --warm-ms 0 --repeats 1 --max-seconds 1 --out n.json > bops_d128_$n.txt 2>&1; echo "bwd d128 $n rc $?"
  grep -E '^  [a-z_].*\(|duration' bops_d128_$n.txt | head -12
done
(cd . && tar czf $OUT/r329.tgz bops_*.txt)

# ---- run 331 (test_gpu of git 5534cb3, version 44's kernels)
# Run 331 (1x H200): the whole GPU test suite on version 44 (main 205cf06's kernels), in eight
# gtest shards at once.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 480 build-cudabe/bin/test_gpu > all_$i.txt 2>&1 & done; wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' all_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' all_$i.txt) failed, $(grep -cE '^\[  SKIPPED' all_$i.txt) skipped; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' all_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' all_*.txt | head
(cd . && tar czf $OUT/r331.tgz *.txt)

# ---- run 333 (kernel_bench_old = main 01b0f47, kernel_bench_new = git 03660d8)
# Run 333 (1x H200): version 44 (git 03660d8) against main 01b0f47 on dense d=128 4K, fwd,
# causal and not, three rounds (old, new).
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
for r in 1 2 3; do for v in old new; do
  timeout 30 build-cudabe/bin/kernel_bench_$v --suites dense --dense-n 4096 --dense-d 128 --passes fwd --max-seconds 2 --out d_${v}_$r.json > d_${v}_$r.txt 2>&1; echo "== $v $r rc $?"
  grep -E '^dense' d_${v}_$r.txt | awk '{print $8, $9, $10}'
done; done
(cd . && tar czf $OUT/r333.tgz *.txt *.json)
