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

# Run 344 (files at the top of this folder), the first build of narrow first tiles (102de54,
# patch fwd_narrow_first_tile_serialised_v47.patch; ptxas serialised every wgmma of the 192-key
# kernel in that build, C7511, so both arms of this A/B ran the serialised kernel): tests, then
# the A/B in that one binary.
build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > narrow.txt
for r in 1 2 3; do for v in 0 1; do
  LONGATTN_SM90_FWD_NARROW=$v build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 \
    --dense-d 128 --passes fwd --max-seconds 2 --out ab_${v}_$r.json > ab_${v}_$r.txt
done; done
build-cudabe/bin/test_gpu --gtest_filter='FlashWide.*:FlashTailSplit.*:Kernels/FlashCase.ForwardMatchesCpuReference/*d128*' > tests.txt
compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > memcheck.txt
compute-sanitizer --tool synccheck build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > synccheck.txt

# Run 345 (run345/), the same build: dense d=128 anchored (0.81-0.87x cuDNN: the serialised
# kernel), then the whole test_gpu in eight shards (all passed but one shard cut by its timeout).
bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kb128 -- --suites dense \
  --dense-n 4096 8192 16384 --dense-d 128 --max-seconds 3

# Runs 346 (run346/) and 347 (run347/): kernel_bench_old = 3633aaf (the unchanged kernels),
# kernel_bench_new = the second build (346: narrow QK^T into an accumulator of its own, in the
# one 192-key kernel) and the third (347: instantiations of their own, kNarrowKeys; patch
# fwd_narrow_first_tile_instantiation.patch). ab_<old|new1|new0>_<round>: old, new with
# LONGATTN_SM90_FWD_NARROW=1, new with it 0.
for r in 1 2; do for v in old new1 new0; do
  b=kernel_bench_${v%[01]}; nar=${v#new}; [ "$v" = old ] && nar=1
  LONGATTN_SM90_FWD_NARROW=$nar build-cudabe/bin/$b --suites dense --dense-n 4096 8192 16384 \
    --dense-d 128 --passes fwd --max-seconds 2 --out ab_${v}_$r.json > ab_${v}_$r.txt
done; done
build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > narrow.txt
compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > memcheck.txt
compute-sanitizer --tool synccheck build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > synccheck.txt
bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench_new --out-dir kb128 -- --suites dense \
  --dense-n 4096 8192 16384 --dense-d 128 --passes fwd --max-seconds 3
build-cudabe/bin/test_gpu --gtest_filter='FlashWide.*:FlashTailSplit.*:Kernels/FlashCase.ForwardMatchesCpuReference/*d128*' > tests.txt
