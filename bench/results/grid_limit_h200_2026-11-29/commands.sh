# Commands of run 403 (one H200), 2026-11-29, from the repository root, with the binaries of
# main 58cc834 unpacked into build-cudabe/bin, a scratch directory W for its files and $OUT for
# what came back. The test shards' outputs are joined into run403/tests.txt.

# ---- run 403
# Run 403 (1x H200): main 58cc834: FlashNarrow.RunsFirstTilesMatchReference (forced widths through
# forward_runs_narrow_fits) and the other narrow/runs forward tests; then A/B of
# LONGATTN_SM90_GRID_LIMIT=128 against unset (132 CTAs) on the dense d=128 rows at 4K-16K, forward
# and backward, four rounds in ABBA order, default 2 s warm-up.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
F='FlashNarrow.*:FlashRuns.*:FlashTailSplit*'
for i in 0 1 2 3 4 5; do GTEST_TOTAL_SHARDS=6 GTEST_SHARD_INDEX=$i timeout 150 $R/build-cudabe/bin/test_gpu --gtest_filter="$F" > t_$i.txt 2>&1 & done
wait
echo "runs: $(grep -h '^\[ RUN' t_*.txt | wc -l), ok: $(grep -h '^\[       OK' t_*.txt | wc -l)"
grep -hE '^\[  FAILED  \] [A-Z]' t_*.txt | head; grep -hE -B2 -A6 'Failure' t_*.txt | head -30
KB=$R/build-cudabe/bin/kernel_bench
for r in 1 2 3 4; do
  if [ $((r % 2)) = 1 ]; then order="132 128"; else order="128 132"; fi
  for g in $order; do
    env $([ $g = 128 ] && echo LONGATTN_SM90_GRID_LIMIT=128) timeout 60 $KB --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes fwd,bwd --out ab_g${g}_r$r.json > ab_g${g}_r$r.txt 2>&1
    grep -E '^dense' ab_g${g}_r$r.txt | sed "s/^/g$g $r /" >> ab.log
  done
  tail -12 ab.log | awk '{print $1, $2, $3, $4, $5, $(NF-3), $(NF-2), $(NF-1), $NF}'
done
python3 $R/bench/ab_compare.py ab.log --base g132 2>&1 | tail -20
cp -r . $OUT/
