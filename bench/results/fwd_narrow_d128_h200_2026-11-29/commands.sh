#!/bin/bash
# Runs 343-344 (2026-11-29, one H200 each; two different cards: compare within a run only).
# Binaries built from the tree named in each; LONGATTN_SM90_FWD_BN128 and LONGATTN_SM90_FWD_NARROW
# are read on each call.
#
# Run 343, branch wip/fwd-d128-bn128-s3 (543256b; files in bn128_s3_run343/): the d=128 forward
# over complete masks on 128-key tiles by position in three stages (cuDNN's tile), switch off
# against on.
F='*d128*:FlashWide.*:FlashPersistent.*:FlashM128.*:FlashTailSplit.*:FlashPdl.*:FlashSplit.*'
LONGATTN_SM90_FWD_BN128=1 timeout 200 build-cudabe/bin/test_gpu --gtest_filter="$F" > tests_on.txt
for r in 1 2 3; do for v in 0 1; do
  LONGATTN_SM90_FWD_BN128=$v build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 \
    --dense-d 128 --passes fwd --max-seconds 2 --out ab_${v}_$r.json > ab_${v}_$r.txt
done; done
LONGATTN_SM90_FWD_BN128=1 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu \
  --gtest_filter='Kernels/FlashCase.ForwardMatchesCpuReference/*d128_dense*:FlashWide.*' > memcheck.txt

# Run 344, version 47 (narrow first tiles; the tree of this commit): tests, then the A/B.
build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > narrow.txt
for r in 1 2 3; do for v in 0 1; do
  LONGATTN_SM90_FWD_NARROW=$v build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 \
    --dense-d 128 --passes fwd --max-seconds 2 --out ab_${v}_$r.json > ab_${v}_$r.txt
done; done
build-cudabe/bin/test_gpu --gtest_filter='FlashWide.*:FlashTailSplit.*:Kernels/FlashCase.ForwardMatchesCpuReference/*d128*' > tests.txt
compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > memcheck.txt
compute-sanitizer --tool synccheck build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > synccheck.txt
