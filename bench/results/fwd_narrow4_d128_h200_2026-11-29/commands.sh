#!/bin/bash
# Runs 349-350 (2026-11-29, one H200, one device session: the same card). Version 47: narrow
# first tiles at head dim 128 (kNarrowKeys instantiations, every item alike; forward_narrow_keys).
# build-cudabe/bin/* are the build of version 47; main-v46/kernel_bench is the build of main
# before it (3bc1328, version 46's kernels). LONGATTN_SM90_FWD_NARROW is read on each call.
#
# Run 349 (files in run349/): the narrow tests, an A/B of three arms (main-v46; version 47;
# version 47 with the narrow tiles off), three rounds, then the sanitizers and the d=128 tests.
build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > narrow.txt
for r in 1 2 3; do for v in main new1 new0; do
  b=build-cudabe/bin/kernel_bench; [ "$v" = main ] && b=main-v46/kernel_bench
  nar=${v#new}; [ "$v" = main ] && nar=1
  LONGATTN_SM90_FWD_NARROW=$nar $b --suites dense --dense-n 4096 8192 16384 --dense-d 128 \
    --passes fwd --max-seconds 2 --out ab_${v}_$r.json > ab_${v}_$r.txt
done; done
compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > memcheck.txt
compute-sanitizer --tool synccheck build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.*' > synccheck.txt
build-cudabe/bin/test_gpu --gtest_filter='FlashWide.*:FlashTailSplit.*:Kernels/FlashCase.ForwardMatchesCpuReference/*d128*' > tests.txt

# Run 350 (files in run350/): the forward anchored (cuDNN and SDPA flash in the same command),
# then the whole GPU suite in eight shards.
bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kb128 -- --suites dense \
  --dense-n 4096 8192 16384 --dense-d 128 --passes fwd --max-seconds 3 > kb128.log
for i in 0 1 2 3 4 5 6 7; do
  GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i build-cudabe/bin/test_gpu > all_$i.txt &
done; wait
