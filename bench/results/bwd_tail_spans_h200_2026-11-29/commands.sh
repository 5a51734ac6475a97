# Commands of runs 355-357 (one H200 each, 2026-11-29). The scripts ran from the repository root with the
# binaries (kernel_bench, test_gpu) unpacked to build-cudabe/bin: run 355 the build of 5dd913e, runs 356-357
# the version-48 builds (356: spans wherever they cost least; 357: the final rule, spans only where no count of
# parts saves a tenth). cudnn_probe.py is bench/results/fwd_heads_one_by_one_h200_2026-11-28/cudnn_probe.py.

# ---- run 355
# Run 355 (1x H200), main 5dd913e (flash_backward mended in b1b9ff8): the backward GPU tests
# (112: CudaAttention.*, every backward/Bwd/grad/variant case, FlashM80, FlashM128, FlashDkv*)
# in eight shards; then ncu at its locked clock of the d=128 non-causal 8K backward in SDPA's
# configuration (--grads write: bf16 dq, dk, dv overwritten) beside cuDNN's.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
F='CudaAttention.*:*Backward*:*Bwd*:FlashM80*:FlashM128*:FlashDkv*:*Grad*:*Variant*'
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 300 build-cudabe/bin/test_gpu --gtest_filter="$F" > tests_$i.txt 2>&1 & done; wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' tests_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' tests_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' tests_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' tests_*.txt | head
M="--metrics sass__inst_executed_per_opcode,smsp__inst_executed.sum,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,sm__cycles_elapsed.avg,lts__t_bytes.sum,lts__t_sectors_op_red.sum,lts__t_sectors_op_atom.sum,lts__t_sector_hit_rate.pct,dram__bytes_read.sum,dram__bytes_write.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,launch__grid_size,launch__block_size,launch__shared_mem_per_block_dynamic,launch__registers_per_thread --print-metric-instances details"
timeout 150 ncu $M -k 'regex:^(?!.*(randn|fill)).*' --launch-skip 4 --launch-count 8 build-cudabe/bin/kernel_bench --suites dense --dense-n 8192 --dense-d 128 --passes bwd --grads write --warmup 1 --warm-ms 0 --repeats 2 --max-seconds 1 --out n.json > ours_bwdw_8192.txt 2>&1; echo "ours rc $?"
timeout 200 ncu $M -k 'regex:(bprop|dot_do_o|convert_dq)' --launch-skip 30 --launch-count 3 python3 bench/results/fwd_heads_one_by_one_h200_2026-11-28/cudnn_probe.py 1:8192:128:b > cudnn_bwd_8192.txt 2>&1; echo "cudnn rc $?"
grep -E "^  [a-zA-Z_]|gpu__time_duration|cycles_elapsed.avg |smsp__inst_executed.sum |tensor_cycles|lts__t_bytes|op_red|op_atom|hit_rate|dram__bytes|issue_active|grid_size|shared_mem|registers" ours_bwdw_8192.txt cudnn_bwd_8192.txt | cut -c1-220
tar czf $OUT/r355.tgz *.txt

# ---- run 356
# Run 356 (1x H200): backward tail spans (the last round of equal works as one span of query
# tiles a CTA). Tests: FlashBwdTailSplit (with spans cases), the d=128/d=64 backward by-position
# suites, FlashBwdTailSplit under memcheck; then A/B in one binary, LONGATTN_SM90_BWD_SPANS=1 / 0,
# three rounds, dense bwd d=128 and d=64 at 4K/8K/16K (fp32 dk/dv: kernel_bench's default).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
F='FlashBwdTailSplit.*:FlashM80*:FlashM128*:FlashDkvTma*:CudaAttention.Backward*'
for i in 0 1 2 3; do GTEST_TOTAL_SHARDS=4 GTEST_SHARD_INDEX=$i timeout 200 build-cudabe/bin/test_gpu --gtest_filter="$F" > tests_$i.txt 2>&1 & done
timeout 240 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashBwdTailSplit.*' > memcheck.txt 2>&1 &
wait
for i in 0 1 2 3; do echo "shard $i: $(grep -cE '^\[       OK' tests_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' tests_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' tests_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]|Failure|error' tests_*.txt | head
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for r in 1 2 3; do for s in 1 0; do for d in 128 64; do
  LONGATTN_SM90_BWD_SPANS=$s timeout 60 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --max-seconds 2 --out ab_s${s}_d${d}_r$r.json > ab_s${s}_d${d}_r$r.txt 2>&1
  echo "spans=$s d$d r$r: $(grep -E '^dense' ab_s${s}_d${d}_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done; done
tar czf $OUT/r356.tgz *.txt *.json

# ---- run 357
# Run 357 (1x H200): backward tail spans, final rule (spans only where no count of parts saves a
# tenth: 8K at both head dims). FlashBwdTailSplit (its spans cases on 4 CTAs), plain and under
# memcheck; then anchored, three rounds of ours then cuDNN, the dense backward at d=128 and d=64
# (kernel_bench's default: dq, dk, dv fp32, added into).
set -u
chmod +x build-cudabe/bin/*
R=$PWD
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 200 build-cudabe/bin/test_gpu --gtest_filter='FlashBwdTailSplit.*' > tests.txt 2>&1 &
timeout 200 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashBwdTailSplit.*' > memcheck.txt 2>&1 &
wait
echo "tests: $(grep -E '^\[  PASSED|^\[  FAILED|OK \]' tests.txt | tr '\n' ' ')"
grep -E 'Failure|Expected|Which is' tests.txt | head
echo "memcheck: $(grep -E 'ERROR SUMMARY|PASSED|FAILED' memcheck.txt | tail -3 | tr '\n' ' ')"
for d in 128 64; do
  timeout 280 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kb$d --rounds 3 --anchors sdpa_cudnn -- --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes bwd --max-seconds 2 > kb$d.log 2>&1; echo "kb$d rc $?"
  tail -22 kb$d/kernel_bench_table.txt
done

# ---- run 358
# Run 358 (1x H200), version 48 (main 08db2cb): the whole GPU test suite in eight shards (224 of 224 passed).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 420 build-cudabe/bin/test_gpu > all_$i.txt 2>&1 & done; wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' all_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' all_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' all_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' all_*.txt | head
grep -h "^\[ RUN" all_*.txt | wc -l
tar czf $OUT/r358.tgz gpu.txt all_*.txt

# ---- run 359
# Run 359 (1x H200), version 48 (main 08db2cb): the whole GPU test suite in eight shards through the portable
# kernels (LONGATTN_FLASH_KERNELS=portable): 224 of 224 passed.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i LONGATTN_FLASH_KERNELS=portable timeout 450 build-cudabe/bin/test_gpu > all_$i.txt 2>&1 & done; wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' all_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' all_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' all_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' all_*.txt | head
grep -h "^\[ RUN" all_*.txt | wc -l
tar czf $OUT/r359.tgz gpu.txt all_*.txt

# ---- run 360
# Run 360 (1x H200; build-trace configured with -DLONGATTN_SM90_BWD_TRACE=ON, its kernel_bench built from
# 9883d5c): the Hopper backward's timeline (measurement build, cmake
# -DLONGATTN_SM90_BWD_TRACE=ON, kernel_bench of 9883d5c's kernels): the works of head 0's key
# blocks at d=128 4K and 8K and d=64 4K, causal and not, fp32 accumulators (kernel_bench's default)
# and SDPA's configuration (--grads write); summarised by bench/bwd_trace_summary.py.
set -u
chmod +x build-trace/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
for g in add write; do for d in 128 64; do
  ns="4096 8192"; [ $d = 64 ] && ns="4096"
  LONGATTN_SM90_BWD_TRACE_OUT=tr_${g} timeout 60 build-trace/bin/kernel_bench --suites dense --dense-n $ns --dense-d $d --passes bwd --grads $g --warmup 2 --warm-ms 0 --repeats 3 --max-seconds 1 --out kb_${g}_d$d.json > kb_${g}_d$d.txt 2>&1; echo "$g d$d rc $?"
done; done
ls
python3 bench/bwd_trace_summary.py tr_*.txt

# ---- run 361 (the binaries of the patch bwd_kv_dkv_prefetch_untaken.patch over 9883d5c; not merged)
# Run 361 (1x H200): the backward's K/V prefetched into L2 when a work is claimed, and its fp32
# dk/dv rows once its tiles are issued (producer only; LONGATTN_SM90_BWD_KV_PREFETCH=0 turns both
# off). Smoke tests (the write/add equality, the m80 and m128 window cases, side by side), then
# A/B in one binary, two rounds, dense bwd d=128 4K/8K/16K, causal and not, fp32 accumulators
# (kernel_bench's default) and --grads write.
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
i=0; for t in CudaAttention.BackwardOverwritesGradients FlashM80.WindowMasksMatchReference FlashM128.WindowMasksMatchReference; do
  timeout 100 build-cudabe/bin/test_gpu --gtest_filter=$t > tests_$i.txt 2>&1 & i=$((i+1)); done; wait
echo "tests: $(cat tests_*.txt | grep -E '^\[  PASSED|^\[  FAILED|OK \]' | tr '\n' ' ')"
for r in 1 2; do for p in 1 0; do for g in add write; do
  LONGATTN_SM90_BWD_KV_PREFETCH=$p timeout 40 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes bwd --grads $g --warm-ms 300 --max-seconds 1 --out ab_p${p}_${g}_d128_r$r.json > ab_p${p}_${g}_d128_r$r.txt 2>&1
  echo "prefetch=$p $g d128 r$r: $(grep -E '^dense' ab_p${p}_${g}_d128_r$r.txt | awk '{print $3, $6, $8}' | tr '\n' '|')"
done; done; done
tar czf $OUT/r361.tgz gpu.txt tests_*.txt ab_*.txt ab_*.json

# ---- run 362
# Run 362 (1x H200, another lease), version 48 (main cb39980): the d=128 8K backward anchored
# again, three rounds of ours then cuDNN (fp32 accumulators, kernel_bench's default).
set -u
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version,serial --format=csv > gpu.txt  # (the serial column is not committed)
timeout 150 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir kb8k --rounds 3 --anchors sdpa_cudnn -- --suites dense --dense-n 8192 --dense-d 128 --passes bwd --max-seconds 2 > kb8k.log 2>&1; echo "rc $?"
tail -4 kb8k/kernel_bench_table.txt
grep -E "^dense" kb8k/kernel_bench_table.txt | head -3
