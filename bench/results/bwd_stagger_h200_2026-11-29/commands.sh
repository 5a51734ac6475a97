# Commands of runs 363-366 (one H200 each, 2026-11-29). The scripts ran from the repository root with the
# binaries (kernel_bench, test_gpu) unpacked to build-cudabe/bin, built from main 08f3694 with the patch
# bwd_stagger_stream_untaken.patch (run 363: its first form, stagger only; runs 364-365 the whole patch).

# ---- run 363
# Run 363 (1x H200): staggered rounds of the dense backward (LONGATTN_SM90_BWD_STAGGER=1: the whole
# rounds as one column of works a CTA at staggered phases). Tests: FlashBwdStagger,
# FlashBwdTailSplit, the by-position backward suites; FlashBwdStagger under memcheck; then A/B in
# one binary, STAGGER=1 / 0, three rounds, dense bwd d=128 and d=64 at 4K/8K/16K (fp32 dk/dv).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
F='FlashBwdStagger.*:FlashBwdTailSplit.*:FlashM80*:FlashM128*:FlashDkvTma*'
for i in 0 1 2 3; do GTEST_TOTAL_SHARDS=4 GTEST_SHARD_INDEX=$i timeout 200 build-cudabe/bin/test_gpu --gtest_filter="$F" > tests_$i.txt 2>&1 & done
timeout 240 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashBwdStagger.*' > memcheck.txt 2>&1 &
wait
for i in 0 1 2 3; do echo "shard $i: $(grep -cE '^\[       OK' tests_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' tests_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' tests_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]|Failure|error|Expected|Which is' tests_*.txt | head -20
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for s in 1 0; do for d in 128 64; do
  LONGATTN_SM90_BWD_STAGGER=$s timeout 60 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --max-seconds 2 --out ab_s${s}_d${d}_r$r.json > ab_s${s}_d${d}_r$r.txt 2>&1
  echo "stagger=$s d$d r$r: $(grep -E '^dense' ab_s${s}_d${d}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done; done
tar czf $OUT/r363.tgz *.txt *.json

# ---- run 364
# Run 364 (1x H200): the dense backward's whole rounds staggered (LONGATTN_SM90_BWD_STAGGER=1) and
# every work in spans (LONGATTN_SM90_BWD_STREAM=1 in order, 2 column by column). Tests:
# FlashBwdStagger (both), FlashBwdTailSplit; FlashBwdStagger under memcheck; then A/B in one binary,
# base / stagger / stream1 / stream2, three rounds, dense bwd d=128 and d=64 at 4K/8K/16K (fp32 dk/dv).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 280 build-cudabe/bin/test_gpu --gtest_filter='FlashBwdStagger.*' > tests_stagger.txt 2>&1 &
timeout 280 build-cudabe/bin/test_gpu --gtest_filter='FlashBwdTailSplit.*' > tests_tail.txt 2>&1 &
timeout 280 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashBwdStagger.*' > memcheck.txt 2>&1 &
wait
for f in tests_stagger tests_tail; do echo "$f: $(grep -E '^\[  PASSED|^\[  FAILED|OK \]' $f.txt | tr '\n' ' ')"; done
grep -hE 'Failure|Expected|Which is' tests_*.txt | head -20
echo "memcheck: $(grep -cE '^\[ bwd' memcheck.txt) bwd checks; $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for arm in base stagger stream1 stream2; do for d in 128 64; do
  case $arm in base) E="LONGATTN_SM90_BWD_STAGGER=0";; stagger) E="LONGATTN_SM90_BWD_STAGGER=1";; stream1) E="LONGATTN_SM90_BWD_STREAM=1";; stream2) E="LONGATTN_SM90_BWD_STREAM=2";; esac
  env $E timeout 60 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --max-seconds 2 --out ab_${arm}_d${d}_r$r.json > ab_${arm}_d${d}_r$r.txt 2>&1
  echo "$arm d$d r$r: $(grep -E '^dense' ab_${arm}_d${d}_r$r.txt | grep full | awk '{print $3, $8}' | tr '\n' '|')"
done; done; done
tar czf $OUT/r364.tgz *.txt *.json

# ---- run 365
# Run 365 (1x H200): the dense backward's last round at 4K (116 of 132 works) in spans, forced
# (LONGATTN_SM90_BWD_SPANS=force), against the plan (no split at 4K) and every work in spans
# (LONGATTN_SM90_BWD_STREAM=1); five rounds, dense bwd d=128 and d=64 at 4K and 12K (fp32 dk/dv).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
for r in 1 2 3 4 5; do for arm in base spans stream1; do for d in 128 64; do
  case $arm in base) E="LONGATTN_SM90_BWD_SPANS=1";; spans) E="LONGATTN_SM90_BWD_SPANS=force";; stream1) E="LONGATTN_SM90_BWD_STREAM=1";; esac
  env $E timeout 60 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 12288 --dense-d $d --passes bwd --max-seconds 2 --out ab_${arm}_d${d}_r$r.json > ab_${arm}_d${d}_r$r.txt 2>&1
  echo "$arm d$d r$r: $(grep -E '^dense' ab_${arm}_d${d}_r$r.txt | grep full | awk '{print $3, $8}' | tr '\n' '|')"
done; done; done
tar czf $OUT/r365.tgz *.txt *.json

# ---- run 366 (build-trace configured with -DLONGATTN_SM90_BWD_TRACE=ON, its kernel_bench built from 27a2ab3 with the
# trace by CTA of the next commit; the binary unpacked to build-trace/bin)
# Run 366 (1x H200; build-trace configured with -DLONGATTN_SM90_BWD_TRACE=ON): the Hopper backward's
# timeline by CTA (LONGATTN_SM90_BWD_TRACE_BY_CTA=1: the first 8 works of CTAs 0..7, so the works
# after the first wave are seen too), d=128 4K and 8K and d=64 4K, causal and not, fp32 added
# (kernel_bench's default) and SDPA's configuration (--grads write).
set -u
chmod +x build-trace/bin/*
R=$PWD
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
for g in add write; do for d in 128 64; do
  ns="4096 8192"; [ $d = 64 ] && ns="4096"
  LONGATTN_SM90_BWD_TRACE_BY_CTA=1 LONGATTN_SM90_BWD_TRACE_OUT=tr_${g} timeout 60 build-trace/bin/kernel_bench --suites dense --dense-n $ns --dense-d $d --passes bwd --grads $g --warmup 2 --warm-ms 0 --repeats 3 --max-seconds 1 --out kb_${g}_d$d.json > kb_${g}_d$d.txt 2>&1; echo "$g d$d rc $?"
done; done
ls
python3 $R/bench/bwd_trace_summary.py tr_*.txt | tee trace_summary.txt
tar czf $OUT/r366.tgz *.txt *.json
