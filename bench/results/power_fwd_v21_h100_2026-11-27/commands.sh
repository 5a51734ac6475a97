# Commands of run 54 (one H100, 2026-11-27; kernel_bench of git 435d9ae as kernel_bench)
# Clocks and power every 50 ms while our kernels (kernel_bench, 3 s warm-up per row) and cuDNN's SDPA
# (sustained 3 s) run the same shapes: d=128 non-causal 16K and 4K
cd "$(dirname "$0")"  # kernel_bench on the PATH
nvidia-smi --query-gpu=name,power.limit --format=csv,noheader
nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active --format=csv,noheader -lms 50 > $OUT/smi.csv &
SMI=$!
sleep 1
for n in 16384 4096; do
  echo "mark ours_$n start $(date +%s.%N)" >> $OUT/marks.txt
  stdbuf -oL kernel_bench --suites dense --dense-n $n --dense-d 128 --warm-ms 3000 --max-seconds 10 --out x.json 2>&1 | while read -r l; do echo "ours_$n $(date +%s.%N) $l"; done | grep -E "dense" >> $OUT/marks.txt
  echo "mark ours_$n end $(date +%s.%N)" >> $OUT/marks.txt
  sleep 2
  python3 sdpa_sustained.py $n 128 3 | sed "s/^/cudnn_$n /" >> $OUT/marks.txt
  sleep 2
done
kill $SMI
cat $OUT/marks.txt
wc -l $OUT/smi.csv
