# Commands of run 404 (one H200, two calls), 2026-11-29, from the repository root, with the
# binaries of main 58cc834 unpacked into build-cudabe/bin: the whole test_gpu in 16 shards through
# the Hopper kernels, then through the portable kernels; the shards' outputs joined into
# run404_tests_hopper.txt and run404_tests_portable.txt. Call 1: `bash commands.sh hopper`,
# call 2: `bash commands.sh portable`.

set -u
mode=${1:-hopper}
mkdir -p build-cudabe/bin
for f in .devrun/bin/*.gz; do gunzip -c "$f" > build-cudabe/bin/$(basename "$f" .gz); done
chmod +x build-cudabe/bin/*
R=$PWD; W=$(mktemp -d); cd $W
nvidia-smi --query-gpu=name,memory.total,power.limit,driver_version --format=csv > gpu.txt
export LONGATTN_GIT_DESCRIBE=$(cat $R/.devrun/git)
[ $mode = portable ] && export LONGATTN_FLASH_KERNELS=portable
for i in $(seq 0 15); do GTEST_TOTAL_SHARDS=16 GTEST_SHARD_INDEX=$i timeout 280 $R/build-cudabe/bin/test_gpu > t_$i.txt 2>&1 & done
wait
echo "$mode: runs $(grep -h '^\[ RUN' t_*.txt | wc -l), ok $(grep -h '^\[       OK' t_*.txt | wc -l), passed lines: $(grep -h 'PASSED' t_*.txt | wc -l)"
grep -hE '^\[  FAILED  \] [A-Z]' t_*.txt | head; grep -hE -B2 -A6 'Failure' t_*.txt | head -30
for i in $(seq 0 15); do tail -1 t_$i.txt | grep -q PASSED || echo "shard $i: $(tail -2 t_$i.txt | tr '\n' ' ')"; done
cp -r . $OUT/
