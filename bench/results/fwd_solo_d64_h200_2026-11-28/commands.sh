# Commands of runs 322-325 (one H200 each, 2026-11-28). Binaries built from main 5130176 with
# bench/results/fwd_solo_d64_2026-11-28.patch applied (the patch as it was last: run 322 was built
# before its measurement switches, run 323 before the producer-sleep one);
# .devrun/bin held them gzipped, unpacked to build-cudabe/bin on the device.

# ---- run 322
# Run 322 (1x H200): the solo warpgroup ("2 + 1") listed d=64 forward: tests (FlashSolo, the
# forward cases, kernel choice), memcheck and synccheck on FlashSolo; then an A/B on random
# 64K masks, LONGATTN_SM90_FWD_SOLO=0/1, two rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
timeout 150 build-cudabe/bin/test_gpu --gtest_filter='FlashSolo.*:FlashCase.Forward*:FlashKernels.KernelChoice:FlashKernels.RejectsWhatItCannotRun' > tests.txt 2>&1; echo tests rc $?; grep -E '^\[  (PASSED|FAILED)|FAILED' tests.txt | head -20
(cd . && tar czf $OUT/r322.tgz *.txt)
export LONGATTN_SM90_FWD_SOLO=1
timeout 100 compute-sanitizer --tool memcheck build-cudabe/bin/test_gpu --gtest_filter='FlashSolo.*' > memcheck.txt 2>&1; echo memcheck rc $?; tail -3 memcheck.txt
timeout 100 compute-sanitizer --tool synccheck build-cudabe/bin/test_gpu --gtest_filter='FlashSolo.*' > synccheck.txt 2>&1; echo synccheck rc $?; tail -3 synccheck.txt
unset LONGATTN_SM90_FWD_SOLO
(cd . && tar czf $OUT/r322.tgz *.txt)
KB="--suites sparse --sparse-d 64 --sparse-patterns random --densities 0.5 0.25 0.1 0.05 --passes fwd --max-seconds 2"
for r in 1 2; do for v in 0 1; do
  LONGATTN_SM90_FWD_SOLO=$v timeout 80 build-cudabe/bin/kernel_bench $KB --mask-dir masks --out ab_solo${v}_$r.json > ab_solo${v}_$r.txt 2>&1; echo ab $v $r rc $?
  grep -E 'random' ab_solo${v}_$r.txt | head -8
done; done
(cd . && tar czf $OUT/r322.tgz *.txt *.json)

# ---- run 323
# Run 323 (1x H200): where the solo kernel's time goes: random 64K d=64 forward at 50% and 10%,
# the pair alone (LONGATTN_SM90_FWD_SOLO=0), pair + solo, the solo kernel's pair alone (solo off:
# 160 registers, Q from shared memory, 3 stages) and its solo alone (pair off); two rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
KB="--suites sparse --sparse-d 64 --sparse-patterns random --densities 0.5 0.1 --passes fwd --max-seconds 2"
for r in 1 2; do for v in base solo paironly soloonly; do
  case $v in base) E="LONGATTN_SM90_FWD_SOLO=0";; solo) E="LONGATTN_SM90_FWD_SOLO=1";; paironly) E="LONGATTN_SM90_FWD_SOLO=1 LONGATTN_SM90_FWD_SOLO_OFF=solo";; soloonly) E="LONGATTN_SM90_FWD_SOLO=1 LONGATTN_SM90_FWD_SOLO_OFF=pair";; esac
  env $E timeout 60 build-cudabe/bin/kernel_bench $KB --mask-dir masks --out v_${v}_$r.json > v_${v}_$r.txt 2>&1; echo "== $v $r rc $?"
  grep -E 'random' v_${v}_$r.txt | awk '{print $7, $8, $9, $15, $16}'
done; done
(cd . && tar czf $OUT/r323.tgz *.txt *.json)

# ---- run 324
# Run 324 (1x H200): ncu of the head-dim-64 forward kernels: listed random 50% 64K with the pair
# alone (base) and with the solo warpgroup; dense 16K with the three-warpgroup kernel (wide) and
# with the listed pair (LONGATTN_SM90_FWD_WIDE=0); then timings of the dense pair and triple.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
which ncu > ncu_path.txt 2>&1; ncu --version >> ncu_path.txt 2>&1
S="--section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis --print-details all"
SP="--suites sparse --sparse-d 64 --sparse-patterns random --densities 0.5 --passes fwd --warmup 1 --warm-ms 0 --repeats 1 --max-seconds 1 --mask-dir masks"
DN="--suites dense --dense-n 16384 --dense-d 64 --passes fwd --warmup 1 --warm-ms 0 --repeats 1 --max-seconds 1"
run() { name=$1; shift; timeout 120 env "$@" > ncu_$name.txt 2>&1; echo "$name rc $?"; }
run base LONGATTN_SM90_FWD_SOLO=0 ncu $S -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench $SP --out n1.json
run solo LONGATTN_SM90_FWD_SOLO=1 ncu $S -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench $SP --out n2.json
run dense3 LONGATTN_SM90_FWD_WIDE=1 ncu $S -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench $DN --out n3.json
run dense2 LONGATTN_SM90_FWD_WIDE=0 ncu $S -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench $DN --out n4.json
for r in 1 2; do for w in 1 0; do
  LONGATTN_SM90_FWD_WIDE=$w timeout 40 build-cudabe/bin/kernel_bench --suites dense --dense-n 16384 65536 --dense-d 64 --passes fwd --max-seconds 2 --out dw${w}_$r.json > dw${w}_$r.txt 2>&1; echo "dense wide=$w $r rc $?"; grep -E '^dense' dw${w}_$r.txt | grep -v causal | head -4
done; done
cd . && for f in ncu_*.txt; do echo "== $f"; grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Executed Ipc Active|Issue Slots Busy|SM Busy|No Eligible|Active Warps Per|Eligible Warps|Shared Memory|Pipe|Stall|Warp Cycles Per Issued" $f | head -40; done > summary.txt
tar czf $OUT/r324.tgz *.txt *.json

# ---- run 325
# Run 325 (1x H200): the instruction mix (ncu InstructionStats) of the listed d=64 forward with the
# pair alone and with the solo warpgroup (random 50% 64K); then timed A/B of both with the
# producer's waits given a suspend-time hint (LONGATTN_SM90_FWD_PROD_SLEEP=1), two rounds.
set -u
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
S="--section InstructionStats --section SpeedOfLight --print-details all"
SP="--suites sparse --sparse-d 64 --sparse-patterns random --densities 0.5 --passes fwd --warmup 1 --warm-ms 0 --repeats 1 --max-seconds 1 --mask-dir masks"
for v in 0 1; do
  timeout 100 env LONGATTN_SM90_FWD_SOLO=$v ncu $S -k regex:flash_fwd_sm90 --launch-skip 1 --launch-count 1 build-cudabe/bin/kernel_bench $SP --out n.json > ncu_inst_solo$v.txt 2>&1; echo "ncu solo=$v rc $?"
done
KB="--suites sparse --sparse-d 64 --sparse-patterns random --densities 0.5 0.1 --passes fwd --max-seconds 2 --mask-dir masks"
for r in 1 2; do for v in 0 1; do for sl in 0 1; do
  LONGATTN_SM90_FWD_SOLO=$v LONGATTN_SM90_FWD_PROD_SLEEP=$sl timeout 40 build-cudabe/bin/kernel_bench $KB --out t_s${v}_p${sl}_$r.json > t_s${v}_p${sl}_$r.txt 2>&1; echo "== solo=$v sleep=$sl round $r rc $?"
  grep -E '^sparse' t_s${v}_p${sl}_$r.txt | awk '{print $8, $9}'
done; done; done
(cd . && tar czf $OUT/r325.tgz *.txt *.json)
