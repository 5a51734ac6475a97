# Commands of runs 340-341 (one H200 each, 2026-11-28), from the repository root with the binaries
# unpacked to build-cudabe/bin: kernel_bench_old = ad26a2e (version 45), kernel_bench_new and test_gpu =
# 595a5ac (run 340) and f64df47 (run 341), whose kernels are version 46's (4715fe7).

# ---- run 340
# Run 340 (1x H200): short items for the d=64 forward as their own instantiation (working tree on
# ad26a2e; kernel_bench_old = ad26a2e): the whole GPU suite in eight shards, memcheck and
# synccheck on FlashShortItems, A/B on dense d=64 4K-16K forward (three rounds), then the new
# build anchored on dense d=64 4K-16K.
set -u
mkdir -p build-cudabe/bin
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
cd .
for r in 1 2 3; do for v in old new; do
  timeout 60 build-cudabe/bin/kernel_bench_$v --suites dense --dense-n 4096 8192 16384 --dense-d 64 --passes fwd --max-seconds 2 --out ab_${v}_$r.json > ab_${v}_$r.txt 2>&1; echo "== $v r$r rc $?"
  grep -E '^dense' ab_${v}_$r.txt | awk '{print $3, $6, $8}' | tr '\n' ' '; echo
done; done
cd - > /dev/null
timeout 150 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench_new --out-dir kb64 -- --suites dense --dense-n 4096 8192 16384 --dense-d 64 --max-seconds 3 > kb64.log 2>&1; echo "kb64 rc $?"
tail -13 kb64/kernel_bench_table.txt | awk '{print $2, $3, $6, $8, $14, $15}'
timeout 120 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashShortItems.*' > memcheck.txt 2>&1; echo "memcheck rc $?"; tail -3 memcheck.txt
timeout 120 compute-sanitizer --tool synccheck build-cudabe/bin/test_gpu --gtest_filter='FlashShortItems.*' > synccheck.txt 2>&1; echo "synccheck rc $?"; tail -3 synccheck.txt
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 330 build-cudabe/bin/test_gpu > all_$i.txt 2>&1 & done; wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' all_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' all_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' all_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' all_*.txt | head
(cd . && tar czf $OUT/r340.tgz gpu.txt *.txt *.json kb64.log kb64/*.json kb64/*.txt)

# ---- run 341
# Run 341 (1x H200): branch wip/fwd-short-v45 (test_gpu with FlashTailSplit's short items off):
# FlashTailSplit and FlashShortItems; A/B on dense d=64 2K and 4K forward (2K: all short items
# under the rule), old = ad26a2e, three rounds.
set -u
mkdir -p build-cudabe/bin
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
cd .
for r in 1 2 3; do for v in old new; do
  timeout 40 build-cudabe/bin/kernel_bench_$v --suites dense --dense-n 2048 4096 --dense-d 64 --passes fwd --max-seconds 2 --out ab2_${v}_$r.json > ab2_${v}_$r.txt 2>&1; echo "== $v r$r rc $?"
  grep -E '^dense' ab2_${v}_$r.txt | awk '{print $3, $6, $8}' | tr '\n' ' '; echo
done; done
timeout 150 build-cudabe/bin/test_gpu --gtest_filter='FlashTailSplit.*:FlashShortItems.*' > tests.txt 2>&1; echo "tests rc $?"; grep -E '^\[  PASSED|^\[  FAILED' tests.txt
tar czf $OUT/r341.tgz gpu.txt *.txt *.json
