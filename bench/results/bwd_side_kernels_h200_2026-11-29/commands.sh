# Commands of runs 379-385 (one H200 each, 2026-11-29). Each script ran from the repository root,
# with the binaries of the build under test unpacked into build-cudabe/bin, a scratch directory W
# for its files and $OUT for what came back.
# Run 379: main 2c77385 (version 50, the conversion of bbe5423). Runs 380 and 382: b6ab25a (the
# accumulator zeroed in the delta kernel's launch, the conversion launched with programmatic
# serialisation, last blocks first; each by its switch in one binary). Run 381: b6ab25a plus
# dq_convert_overlap_untaken.patch (the conversion overlapping the backward kernel; not merged).

# ---- run 379
# Run 379 (1x H200): bbe5423 + 2ac0d44 on the GPU: every GPU test that runs a backward (eight
# shards), then memcheck on CudaAttention.BackwardDqTransposed; then version 50's committed
# conversion anchored against cuDNN in SDPA's configuration (--grads write), d=128, two rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 250 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' bwd_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
grep -hE -B2 -A6 'Failure' bwd_*.txt | head -40
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l)"
timeout 70 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
cd $R
timeout 170 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir $W/kbw128 --rounds 2 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 > $W/kbw128.log 2>&1; echo "kbw128 rc $?"
tail -9 $W/kbw128/kernel_bench_table.txt
cd $W; tar czf $OUT/r379.tgz *.txt *.log kbw128

# ---- run 380
# Run 380 (1x H200): the transposed dq accumulator zeroed in the delta kernel's launch, the
# conversion launched with programmatic serialisation and converting the last blocks first.
# Tests: every GPU test that runs a backward (16 shards), memcheck on BackwardDqTransposed. ncu
# times of the side kernels at 4K; A/B in one binary by the three switches, two rounds, d=128
# 4K and 8K, --grads write.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 250 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
wait
for i in $(seq 0 15); do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' bwd_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
grep -hE -B2 -A6 'Failure' bwd_*.txt | head -40
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l), ok: $(grep -h '^\[       OK' bwd_*.txt | wc -l)"
timeout 70 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
KB=$R/build-cudabe/bin/kernel_bench
M="--metrics gpu__time_duration.sum"
for z in 1 0; do
  LONGATTN_BWD_ZERO_IN_DELTA=$z timeout 40 ncu $M --launch-skip 4 --launch-count 8 $KB --suites dense --dense-n 4096 --dense-d 128 --passes bwd --grads write --warmup 1 --warm-ms 0 --repeats 2 --max-seconds 1 --out n.json > ncu_z$z.txt 2>&1
  echo "== zero_in_delta=$z"; grep -E "^  [a-zA-Z_]|gpu__time_duration" ncu_z$z.txt | sed -E 's/\(CUtensorMap.*//' | cut -c1-90 | head -16
done
cfg() { case $1 in on) echo "";; zero0) echo "LONGATTN_BWD_ZERO_IN_DELTA=0";; pdl0) echo "LONGATTN_DQ_CONVERT_PDL=0";; lf0) echo "LONGATTN_DQ_CONVERT_LAST_FIRST=0";; off) echo "LONGATTN_BWD_ZERO_IN_DELTA=0 LONGATTN_DQ_CONVERT_PDL=0 LONGATTN_DQ_CONVERT_LAST_FIRST=0";; esac; }
for r in 1 2; do for c in off on zero0 pdl0 lf0; do
  env $(cfg $c) timeout 40 $KB --suites dense --dense-n 4096 8192 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_${c}_r$r.json > ab_${c}_r$r.txt 2>&1
  echo "$c r$r: $(grep -E '^dense' ab_${c}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
tar czf $OUT/r380.tgz *.txt *.json

# ---- run 381
# Run 381 (1x H200): the dq conversion overlapping the d=128 writing backward (non-causal,
# complete masks): the kernel counts its completed dQ reduces per (batch, head), the conversion
# (launched with programmatic serialisation) converts a pair's blocks once they are whole.
# Tests: every GPU test that runs a backward (16 shards), memcheck on BackwardDqTransposed;
# A/B in one binary (LONGATTN_DQ_CONVERT_OVERLAP=0), three rounds, d=128 4K-16K, --grads write.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
KB=$R/build-cudabe/bin/kernel_bench
timeout 60 $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > first.txt 2>&1; echo "first: rc $? $(grep -E '^\[  PASSED|^\[  FAILED' first.txt | tr '\n' ' ')"
grep -hE -A6 'Failure' first.txt | head -20
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 250 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > bwd_$i.txt 2>&1 & done
wait
for i in $(seq 0 15); do echo "shard $i: $(grep -cE '^\[       OK' bwd_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' bwd_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' bwd_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' bwd_*.txt | head
grep -hE -B2 -A6 'Failure' bwd_*.txt | head -40
echo "runs: $(grep -h '^\[ RUN' bwd_*.txt | wc -l), ok: $(grep -h '^\[       OK' bwd_*.txt | wc -l)"
timeout 70 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.BackwardDqTransposed' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for c in 0 1; do
  LONGATTN_DQ_CONVERT_OVERLAP=$c timeout 50 $KB --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads write --max-seconds 2 --out ab_o${c}_r$r.json > ab_o${c}_r$r.txt 2>&1
  echo "overlap=$c r$r: $(grep -E '^dense' ab_o${c}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done
tar czf $OUT/r381.tgz *.txt *.json

# ---- run 382
# Run 382 (1x H200): b6ab25a (the transposed accumulator zeroed in the delta kernel's launch,
# its conversion with programmatic serialisation, last blocks first) anchored against cuDNN in
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
cd $W; tar czf $OUT/r382.tgz *.txt *.log kbw128

# ---- run 383 (build-cudabe: b6ab25a plus delta_trigger_untaken.patch; not merged)
# Run 383 (1x H200): the grouped delta kernel lets the backward kernel after it be scheduled once
# its blocks have started (griddepcontrol.launch_dependents; LONGATTN_DELTA_TRIGGER=0: at their
# exit). Tests: every GPU test that runs a backward (16 shards); A/B in one binary, three rounds, d=128 and d=64 4K-8K, --grads write. Then the
# d=128 forward anchored against cuDNN, three rounds (kernels unchanged since version 47).
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
KB=$R/build-cudabe/bin/kernel_bench
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*:FlashRotate*:*Ring*'
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 230 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > t_$i.txt 2>&1 & done
wait
echo "tests: runs $(grep -h '^\[ RUN' t_*.txt | wc -l), ok $(grep -h '^\[       OK' t_*.txt | wc -l), failed $(grep -hE '^\[  FAILED  \] [A-Z]' t_*.txt | wc -l)"
grep -hE -B2 -A6 'Failure' t_*.txt | head -30
for r in 1 2 3; do for c in 0 1; do for d in 128 64; do
  LONGATTN_DELTA_TRIGGER=$c timeout 40 $KB --suites dense --dense-n 4096 8192 --dense-d $d --passes bwd --grads write --max-seconds 2 --out ab_t${c}_d${d}_r$r.json > ab_t${c}_d${d}_r$r.txt 2>&1
  echo "trigger=$c d$d r$r: $(grep -E '^dense' ab_t${c}_d${d}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done; done
cd $R
timeout 200 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir $W/kbf128 --rounds 3 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes fwd --max-seconds 2 > $W/kbf128.log 2>&1; echo "kbf128 rc $?"
tail -9 $W/kbf128/kernel_bench_table.txt
cd $W; tar czf $OUT/r383.tgz *.txt *.json *.log kbf128

# ---- run 384 (build-cudabe: 5a1ffe6, version 51's code)
# Run 384 (1x H200): the whole GPU test suite on 5a1ffe6 (version 51's code), sixteen shards.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 380 $R/build-cudabe/bin/test_gpu > all_$i.txt 2>&1 & done
wait
for i in $(seq 0 15); do echo "shard $i: $(grep -cE '^\[       OK' all_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' all_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' all_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' all_*.txt | head
grep -hE -B2 -A6 'Failure' all_*.txt | head -30
echo "runs: $(grep -h '^\[ RUN' all_*.txt | wc -l), ok: $(grep -h '^\[       OK' all_*.txt | wc -l), skipped: $(grep -h '^\[  SKIPPED' all_*.txt | wc -l)"
tar czf $OUT/r384.tgz *.txt

# ---- run 385 (build-cudabe: 7ebd0bd, version 51's code)
# Run 385 (1x H200): version 51's d=128 backward at 32K and 64K in SDPA's configuration
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
cd $W; tar czf $OUT/r385.tgz *.txt *.log kbw128l
