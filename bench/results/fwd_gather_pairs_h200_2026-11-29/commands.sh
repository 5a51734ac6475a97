# Commands of run 405 (one H200), 2026-11-29, from the repository root, with the binaries of
# branch wip/fwd-gather-pairs 5cd6eb4 (main cfab206 and fwd_gather_pairs.patch) unpacked into
# build-cudabe/bin, a scratch directory W for its files and $OUT for what came back. The test
# shards' outputs are joined into run405/tests.txt; the masks kernel_bench wrote are left out.

# ---- run 405
# Run 405 (1x H200): branch wip/fwd-gather-pairs (the gathered d=128 tiles load two adjacent
# chunks by one 128-row TMA box): FlashGather tests (6 shards) and memcheck of the new one; then
# A/B by LONGATTN_SM90_FWD_GATHER_PAIRS=0 against default on the 64K d=128 forward, random and
# local_window (control: unchanged kernel) at 50/25/10% with dense 64K, four rounds, ABBA, 2 s
# warm-up.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='FlashGather.*'
timeout 200 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='FlashGather.PairedBoxesSameBits' > memcheck.txt 2>&1 &
for i in 0 1 2 3 4 5; do GTEST_TOTAL_SHARDS=6 GTEST_SHARD_INDEX=$i timeout 200 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > t_$i.txt 2>&1 & done
wait
echo "runs: $(grep -h '^\[ RUN' t_*.txt | wc -l), ok: $(grep -h '^\[       OK' t_*.txt | wc -l)"
grep -hE '^\[  FAILED  \] [A-Z]' t_*.txt | head; grep -hE -B2 -A6 'Failure' t_*.txt | head -30
grep -h "^\[       OK" t_*.txt
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
if [ "$(grep -h '^\[       OK' t_*.txt | wc -l)" = 2 ]; then
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3 4; do
  if [ $((r % 2)) = 1 ]; then order="0 1"; else order="1 0"; fi
  for g in $order; do
    env $([ $g = 0 ] && echo LONGATTN_SM90_FWD_GATHER_PAIRS=0) timeout 80 $KB --suites dense,sparse --dense-n 65536 --dense-d 128 --sparse-d 128 --densities 0.5 0.25 0.1 --sparse-patterns random local_window --passes fwd --out ab_p${g}_r$r.json > ab_p${g}_r$r.txt 2>&1
    grep -E '^(dense|sparse)' ab_p${g}_r$r.txt | sed "s/^/p$g $r /" >> ab.log
  done
  tail -14 ab.log | awk '{print $1, $2, $3, $5, $6, $(NF-6), $(NF-5)}' | tr '\n' '|'; echo
done
python3 $R/bench/ab_compare.py ab.log --base p0 2>&1 | tail -20
fi
cp -r --parents $(ls | grep -v '\.npy$') $OUT/
