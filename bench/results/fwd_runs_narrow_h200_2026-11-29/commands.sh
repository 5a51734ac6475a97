# Commands of run 393 (one H200, 2026-11-29), from the repository root, with the binaries of
# branch wip/fwd-runs-narrow (main ae643bf plus fwd_runs_narrow_unverified.patch, first sizes of
# its GPU test) unpacked into build-cudabe/bin, a scratch directory W for its files and $OUT for
# what came back. The six test shards' outputs are joined into tests.txt; the masks kernel_bench
# wrote are left out (it rebuilds them).

# ---- run 393
# Run 393 (1x H200): branch wip/fwd-runs-narrow (narrow first tiles over runs, head dim 128):
# the forward tests over runs and narrow tiles (4 shards); A/B by LONGATTN_SM90_FWD_RUNS_NARROW
# on the block-sparse local_window forward at 64K, d=128, with dense 64K for the speed-up, three
# rounds; memcheck of the new test.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='FlashNarrow.*:FlashRuns.*:*Window*:FlashWide*:FlashTailSplit*'
for i in 0 1 2 3 4 5; do GTEST_TOTAL_SHARDS=6 GTEST_SHARD_INDEX=$i timeout 110 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > t_$i.txt 2>&1 & done
wait
echo "runs: $(grep -h '^\[ RUN' t_*.txt | wc -l), ok: $(grep -h '^\[       OK' t_*.txt | wc -l)"
grep -hE '^\[  FAILED  \] [A-Z]' t_*.txt | head; grep -hE -B2 -A6 'Failure' t_*.txt | head -30
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3; do for s in 0 1; do
  env $([ $s = 0 ] && echo LONGATTN_SM90_FWD_RUNS_NARROW=0) timeout 50 $KB --suites dense,sparse --dense-n 65536 --dense-d 128 --sparse-d 128 --densities 0.5 0.25 0.1 0.05 --sparse-patterns local_window --passes fwd --max-seconds 1.5 --out ab_s${s}_r$r.json > ab_s${s}_r$r.txt 2>&1
  echo "narrow=$s r$r: $(grep -E '^(dense|sparse)' ab_s${s}_r$r.txt | awk '{print $3, $7, $8, $9}' | tr '\n' '|')"
done; done
timeout 60 compute-sanitizer --tool memcheck $R/build-cudabe/bin/test_gpu --gtest_filter='FlashNarrow.RunsFirstTilesMatchReference' > memcheck.txt 2>&1
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
