# Commands of run 53 (one H100, 2026-11-27; kernel_bench of git 435d9ae as kernel_bench)
# ncu: our Hopper forward (version 21) against cuDNN's SDPA forward, d=128 non-causal 4K and 16K, d=64 4K:
# launch shape (cluster), SM / L2 / DRAM throughput, L2 hit rate, tensor pipe
cd "$(dirname "$0")"  # kernel_bench on the PATH
nvidia-smi --query-gpu=name --format=csv,noheader
S="--section LaunchStats --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis"
for row in "4096 128" "16384 128" "4096 64"; do set -- $row
  timeout 150 ncu $S -k regex:flash_fwd_sm90 --launch-skip 2 --launch-count 1 kernel_bench --suites dense --dense-n $1 --dense-d $2 --warmup 1 --warm-ms 0 --repeats 1 --out n.json > $OUT/ours_$1_$2.txt 2>&1; echo "ours $1 $2 rc=$? $SECONDS s"
  timeout 150 ncu $S -k regex:"fprop|sdpa|attn|flash" --launch-skip 2 --launch-count 1 python3 sdpa_one.py $1 $2 0 cudnn > $OUT/cudnn_$1_$2.txt 2>&1; echo "cudnn $1 $2 rc=$? $SECONDS s"
done
cd $OUT && for f in ours_*.txt cudnn_*.txt; do echo "== $f"; grep -E "^  [a-zA-Z_].*\(|Cluster Size|Grid Size|Block Size|Registers Per|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|DRAM Throughput|L2 Hit Rate|Mem Busy|Max Bandwidth|Executed Ipc Active|SM Busy|Issue Slots Busy|Shared Memory Configuration Size|Dynamic Shared" $f | head -24; done > summary.txt; cat summary.txt | head -120
