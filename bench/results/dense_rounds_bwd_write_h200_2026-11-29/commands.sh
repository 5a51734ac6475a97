#!/bin/bash
# Runs 351-354 (2026-11-29, one H200 each; each run its own device session, so compare within a
# run only). build-cudabe/bin/* is the build named in each run; v47/kernel_bench is main at
# a638a60 (version 47's kernels).
#
# Run 351 (run351/), version 47: dense 4K-16K, both passes, three anchored rounds (cuDNN only).
for d in 128 64; do
  bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kb$d --rounds 3 \
    --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d $d --max-seconds 2
done
# Run 352 (run352/), version 47: the d=128 backward at 4K and 8K under each backward switch,
# one round (default first and last), then the 8K backward in three anchored rounds.
for cfg in default LONGATTN_SM90_BWD_GROUP=2 LONGATTN_SM90_BWD_GROUP=4 LONGATTN_SM90_BWD_GROUP=16 \
    LONGATTN_SM90_BWD_ROTATE=0 LONGATTN_SM90_BWD_ROTATE=1 LONGATTN_SM90_BWD_ROTATE=2 \
    LONGATTN_SM90_BWD_TAIL=0 LONGATTN_SM90_QSPLIT=2 LONGATTN_SM90_PDL=0 LONGATTN_SM90_BWD_KREGS=0 \
    LONGATTN_SM90_DQ_TMA=0 LONGATTN_SM90_BWD_PERSISTENT=0 default2; do
  e=""; case $cfg in default*) ;; *) e="$cfg";; esac
  env $e build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 --dense-d 128 \
    --passes bwd --max-seconds 2 --out sw_${cfg}.json > sw_${cfg}.txt
done
bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kb8k --rounds 3 \
  --anchors sdpa_cudnn -- --suites dense --dense-n 8192 --dense-d 128 --passes bwd --max-seconds 2
# Run 353 (run353/), the overwritten-gradients build (c44b378's kernels): tests (the filter ran
# out of its 200 s after FlashBwdTailSplit; the rest ran in run 354), memcheck of the new test,
# the backward A/B (v47 adding, this build adding, this build --grads write), then --grads write
# in two anchored rounds.
build-cudabe/bin/test_gpu --gtest_filter='CudaAttention.*:*CudaVariants*:FlashBwdTailSplit.*:FlashRotate.*:Kernels/FlashCase.BackwardMatchesCpuReference/*bf16_d128*:Kernels/FlashCase.BackwardMatchesCpuReference/*f16_d64*' > tests.txt
compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu \
  --gtest_filter='CudaAttention.BackwardOverwritesGradients' > memcheck.txt
for d in 128 64; do
  v47/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --max-seconds 2 --out ab_old_add_d$d.json > ab_old_add_d$d.txt
  build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --max-seconds 2 --out ab_new_add_d$d.json > ab_new_add_d$d.txt
  build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --max-seconds 2 --grads write --out ab_new_write_d$d.json > ab_new_write_d$d.txt
done
for d in 128 64; do
  bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kbw$d --rounds 2 \
    --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd \
    --grads write --max-seconds 2
done
# Run 354 (run354/), the same build: the whole GPU suite in eight shards, then the dense
# variant's backward with the writing kernels on and off (run354/variant_bwd_write_ab.txt).
for i in 0 1 2 3 4 5 6 7; do
  GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i build-cudabe/bin/test_gpu > all_$i.txt &
done; wait
for r in 1 2; do for w in 1 0; do for d in 128 64; do
  LONGATTN_SM90_BWD_WRITE=$w build-cudabe/bin/longattn bench --device cuda -v dense \
    -n 4096 8192 16384 --heads 16 --head-dim $d --pass bwd --causal no --warmup 5 --repeats 20 \
    --max-seconds 1 --check-rows 0 --quiet --json var_w${w}_d${d}_r$r.json
done; done; done
# (That loop's files did not come back: too many files. The rows in variant_bwd_write_ab.txt
# are this second pass's printed output, on the same warm machine.)
for d in 128 64; do for w in 1 0 1 0; do
  LONGATTN_SM90_BWD_WRITE=$w build-cudabe/bin/longattn bench --device cuda -v dense \
    -n 4096 8192 16384 --heads 16 --head-dim $d --pass bwd --causal no --warmup 5 --repeats 20 \
    --max-seconds 1 --check-rows 0 --quiet
done; done
