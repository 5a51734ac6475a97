# Commands of runs 335-339 (one H200 each, 2026-11-28). The scripts ran from the repository root with
# the binaries unpacked to build-cudabe/bin (kernel_bench_old = 34a93b7, kernel_bench_new and test_gpu = ad26a2e);
# cudnn_probe.py is in this folder (it ran as .devrun/cudnn_probe.py; in run 335 with its five shapes written in).

# ---- run 335
# Run 335 (1x H200): which kernels SDPA's cuDNN backend launches for the dense forward at 4K
# (batch 1 and 4), 8K and 16K, d=128, and 4K d=64: names, grid, block, registers, shared memory.
set -u
mkdir -p .
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 400 ncu --csv -k 'regex:^(?!.*(normal|elementwise|distribution|fill|copy|transpose)).*' --launch-count 200 --metrics launch__grid_size,launch__block_size,launch__registers_per_thread,launch__shared_mem_per_block_dynamic,launch__cluster_dim_x,launch__cluster_dim_y,gpu__time_duration.sum,sm__cycles_elapsed.avg.per_second python3 bench/results/fwd_heads_one_by_one_h200_2026-11-28/cudnn_probe.py 1:4096:128 4:4096:128 1:16384:128 1:4096:64 1:8192:128 > ncu.csv 2>ncu.err; echo "ncu rc $?"
tail -3 ncu.err; wc -l ncu.csv
python3 - <<'PY'
import csv, collections
rows = [r for r in csv.reader(open("ncu.csv")) if len(r) > 10]
hdr = rows[0]; ix = {h: i for i, h in enumerate(hdr)}
k = collections.OrderedDict()
for r in rows[1:]:
    key = (r[ix["ID"]], r[ix["Kernel Name"]][:150])
    k.setdefault(key, {})[r[ix["Metric Name"]]] = r[ix["Metric Value"]]
seen = set()
for (i, name), m in k.items():
    sig = (name, m.get("launch__grid_size"))
    if sig in seen: continue
    seen.add(sig)
    print(i, name, {a.split("__")[-1]: b for a, b in m.items()})
PY
(cd . && tar czf $OUT/r335.tgz gpu.txt ncu.csv ncu.err)

# ---- run 336
# Run 336 (1x H200), main 34a93b7: (1) energy per call, power and SM clock of our dense d=128
# forward and cuDNN's at 4K and 16K (kernel_bench --energy-ms 2000 with the anchors); (2) ncu
# at its locked clock on both kernels at 4K and 16K, non-causal: duration, instructions by
# opcode, pipes, shared-memory and L2/DRAM traffic.
set -u
mkdir -p build-cudabe/bin
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 200 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench --out-dir e -- --suites dense --dense-n 4096 16384 --dense-d 128 --passes fwd --energy-ms 2000 --max-seconds 3 > e.log 2>&1; echo "energy rc $?"
grep -A12 -i "energy" e/kernel_bench_table.txt | head -30
M="--metrics sass__inst_executed_per_opcode,smsp__inst_executed.sum,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,sm__cycles_elapsed.avg,lts__t_bytes.sum,dram__bytes_read.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active --print-metric-instances details"
for n in 4096 16384; do
  timeout 100 ncu $M -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench --suites dense --dense-n $n --dense-d 128 --passes fwd --warmup 1 --warm-ms 0 --repeats 1 --max-seconds 1 --out n.json > ours_$n.txt 2>&1; echo "ours $n rc $?"
  timeout 100 ncu $M -k regex:cudnn --launch-skip 5 --launch-count 1 python3 bench/results/fwd_heads_one_by_one_h200_2026-11-28/cudnn_probe.py 1:$n:128 > cudnn_$n.txt 2>&1; echo "cudnn $n rc $?"
done
grep -h -E "gpu__time_duration|smsp__inst_executed.sum |tensor_cycles|lts__t_bytes|dram__bytes|wavefronts_mem_shared|issue_active|cycles_elapsed.avg " ours_*.txt cudnn_*.txt
(cd . && tar czf $OUT/r336.tgz gpu.txt e.log e/*.json e/*.txt ours_*.txt cudnn_*.txt)

# ---- run 337
# Run 337 (1x H200), main 34a93b7: the forward's head groups (LONGATTN_SM90_FWD_GROUP, a
# measurement switch) on dense calls: default (half of L2 per group: 12 heads at d=128 4K,
# 3 at 16K) against 1, 2 and 4 heads walked together; two rounds; then ncu's L2 and DRAM bytes
# and duration at its locked clock for the default and 1 at d=128 4K and 16K.
set -u
mkdir -p build-cudabe/bin
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
cd .
for r in 1 2; do for g in 0 1 2 4; do
  LONGATTN_SM90_FWD_GROUP=$g timeout 60 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d 128 --passes fwd --max-seconds 2 --out d128_g${g}_$r.json > d128_g${g}_$r.txt 2>&1; echo "== d128 g$g r$r rc $?"
  grep -E '^dense' d128_g${g}_$r.txt | awk '{print $3, $6, $8}' | tr '\n' ' '; echo
done; done
for r in 1 2; do for g in 0 1 2; do
  LONGATTN_SM90_FWD_GROUP=$g timeout 60 build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 8192 16384 --dense-d 64 --passes fwd --max-seconds 2 --out d64_g${g}_$r.json > d64_g${g}_$r.txt 2>&1; echo "== d64 g$g r$r rc $?"
  grep -E '^dense' d64_g${g}_$r.txt | awk '{print $3, $6, $8}' | tr '\n' ' '; echo
done; done
M="--metrics gpu__time_duration.sum,lts__t_bytes.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct"
for n in 4096 16384; do for g in 0 1; do
  LONGATTN_SM90_FWD_GROUP=$g timeout 100 ncu $M -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench --suites dense --dense-n $n --dense-d 128 --passes fwd --warmup 1 --warm-ms 0 --repeats 1 --max-seconds 1 --out n.json > ncu_${n}_g$g.txt 2>&1; echo "== ncu $n g$g rc $?"
  grep -E "duration|lts__t_bytes|dram__bytes|hit_rate" ncu_${n}_g$g.txt | head -4
done; done
tar czf $OUT/r337.tgz gpu.txt *.txt *.json

# ---- run 338
# Run 338 (1x H200): version 45 (main ad26a2e: non-causal forwards one head at a time) against
# 34a93b7 on dense d=128 and d=64 4K-16K forward, two rounds; then version 45 anchored (cuDNN,
# SDPA flash) on the same rows, fwd and bwd; then the whole GPU test suite in eight shards.
set -u
mkdir -p build-cudabe/bin
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
cd .
for r in 1 2; do for v in old new; do for d in 128 64; do
  timeout 60 build-cudabe/bin/kernel_bench_$v --suites dense --dense-n 4096 8192 16384 --dense-d $d --passes fwd --max-seconds 2 --out ab_${v}_d${d}_$r.json > ab_${v}_d${d}_$r.txt 2>&1; echo "== $v d$d r$r rc $?"
  grep -E '^dense' ab_${v}_d${d}_$r.txt | awk '{print $3, $6, $8}' | tr '\n' ' '; echo
done; done; done
cd - > /dev/null
for d in 128 64; do
timeout 200 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench_new --out-dir kb$d -- --suites dense --dense-n 4096 8192 16384 --dense-d $d --max-seconds 3 > kb$d.log 2>&1; echo "kb$d rc $?"
tail -13 kb$d/kernel_bench_table.txt | awk '{print $2, $3, $6, $8, $14, $15}'
done
for i in 0 1 2 3 4 5 6 7; do GTEST_TOTAL_SHARDS=8 GTEST_SHARD_INDEX=$i timeout 400 build-cudabe/bin/test_gpu > all_$i.txt 2>&1 & done; wait
for i in 0 1 2 3 4 5 6 7; do echo "shard $i: $(grep -cE '^\[       OK' all_$i.txt) ok, $(grep -cE '^\[  FAILED  \] [A-Z]' all_$i.txt) failed; $(grep -E '^\[  PASSED|^\[  FAILED  \] [0-9]' all_$i.txt | head -2 | tr '\n' ' ')"; done
grep -hE '^\[  FAILED  \] [A-Z]' all_*.txt | head
(cd . && tar czf $OUT/r338.tgz gpu.txt *.txt *.json kb*.log kb*/*.json kb*/*.txt)

# ---- run 339
# Run 339 (1x H200), version 45 (ad26a2e): the d=128 non-causal 4K backward, ours against
# cuDNN's: ncu at its locked clock (duration, instructions by opcode, pipes, L2 and DRAM bytes)
# and energy a call under the power cap (kernel_bench --energy-ms 2000 with the anchors).
set -u
mkdir -p build-cudabe/bin
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
M="--metrics sass__inst_executed_per_opcode,smsp__inst_executed.sum,sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,lts__t_bytes.sum,dram__bytes_read.sum,dram__bytes_write.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,launch__grid_size,launch__block_size,launch__shared_mem_per_block_dynamic,launch__registers_per_thread --print-metric-instances details"
timeout 120 ncu $M -k regex:sm90 --launch-skip 2 --launch-count 3 build-cudabe/bin/kernel_bench_new --suites dense --dense-n 4096 --dense-d 128 --passes bwd --warmup 1 --warm-ms 0 --repeats 2 --max-seconds 1 --out n.json > ours_bwd_4096.txt 2>&1; echo "ours rc $?"
timeout 120 ncu $M -k 'regex:^(?!.*(normal|elementwise|distribution|fill|copy|transpose|ones)).*' --launch-skip 20 --launch-count 6 python3 bench/results/fwd_heads_one_by_one_h200_2026-11-28/cudnn_probe.py 1:4096:128:b > cudnn_bwd_4096.txt 2>&1; echo "cudnn rc $?"
grep -E "^  [a-zA-Z_]|gpu__time_duration|smsp__inst_executed.sum |tensor_cycles|lts__t_bytes|dram__bytes|issue_active|grid_size|shared_mem|registers" ours_bwd_4096.txt cudnn_bwd_4096.txt | cut -c1-200
timeout 150 bash bench/run_kernel_bench.sh --bin build-cudabe/bin/kernel_bench_new --out-dir e -- --suites dense --dense-n 4096 --dense-d 128 --passes bwd --energy-ms 2000 --max-seconds 3 > e.log 2>&1; echo "energy rc $?"
grep -A6 -i "energy per call" e/kernel_bench_table.txt
(cd . && tar czf $OUT/r339.tgz gpu.txt ours_*.txt cudnn_*.txt e.log e/*.json e/*.txt)
