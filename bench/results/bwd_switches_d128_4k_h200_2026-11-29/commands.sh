#!/bin/bash
# Run 348 (2026-11-29, one H200), main f867ac2 (the kernels of 3633aaf): the d=128 4K backward
# (B 1, H 16, bf16; non-causal and causal rows) under each of the backward's schedule switches,
# two rounds. sw_<switch>_<round>.{txt,json}.
for r in 1 2; do
  for cfg in default LONGATTN_SM90_BWD_GROUP=2 LONGATTN_SM90_BWD_GROUP=4 LONGATTN_SM90_BWD_GROUP=16 \
             LONGATTN_SM90_BWD_ROTATE=0 LONGATTN_SM90_BWD_ROTATE=1 LONGATTN_SM90_BWD_ROTATE=2 \
             LONGATTN_SM90_BWD_TAIL=0 LONGATTN_SM90_QSPLIT=2 LONGATTN_SM90_PDL=0; do
    e=""; [ "$cfg" != default ] && e="$cfg"
    env $e build-cudabe/bin/kernel_bench --suites dense --dense-n 4096 --dense-d 128 --passes bwd \
      --warm-ms 800 --max-seconds 2 --out sw_${cfg}_$r.json > sw_${cfg}_$r.txt
  done
done
