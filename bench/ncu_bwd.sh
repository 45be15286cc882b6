#!/bin/bash
# ncu over the backward: our Hopper dK/dV kernel (full set, and its SASS with stall samples per
# instruction as CSV) beside cudnn's backward kernels, seqlen 4096, 16k tokens, width 2048.
# Usage (GPU machine, repo root, binaries in $B): bench/ncu_bwd.sh  (env DIMS, MASKS, OUT, OURS_ONLY)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
B=${B:-.devcarry}; OUT=${OUT:-/tmp/out}
for d in ${DIMS:-128 64}; do
  for m in ${MASKS:-none}; do
    ncu --clock-control none --set full --import-source no -k 'regex:attn_bwd.*_[0-9a-f]{8}$' --launch-skip 2 --launch-count 1 \
      -o "$OUT/ours_d${d}_$m" -f "$B/jitattn" bench --backward --tokens 16384 --width 2048 --seqlen-q 4096 \
      --head-dim $d --mask $m --budget-ms 30 > "$OUT/run.log" 2>&1
    ncu --import "$OUT/ours_d${d}_$m.ncu-rep" --print-details all > "$OUT/ours_d${d}_$m.txt" 2>&1; cat "$OUT/run.log" >> "$OUT/ours_d${d}_$m.txt"
    ncu --import "$OUT/ours_d${d}_$m.ncu-rep" --page source --csv --print-source sass > "$OUT/ours_d${d}_${m}_sass.csv" 2>&1
    rm -f "$OUT/ours_d${d}_$m.ncu-rep"
    [ -n "${OURS_ONLY:-}" ] && continue  # OURS_ONLY=1: our kernel alone
    ncu --clock-control none --set full --profile-from-start off -o "$OUT/cudnn_d${d}_$m" -f \
      python3 "$B/peer_one.py" $d cudnn $m > "$OUT/run.log" 2>&1
    ncu --import "$OUT/cudnn_d${d}_$m.ncu-rep" --print-details all > "$OUT/cudnn_d${d}_$m.txt" 2>&1; cat "$OUT/run.log" >> "$OUT/cudnn_d${d}_$m.txt"; rm -f "$OUT/run.log"
    rm -f "$OUT/cudnn_d${d}_$m.ncu-rep"
    grep -E "attn_bwd|cudnn|Duration|Compute \(SM\) Throughput|Issue Slots Busy" "$OUT/ours_d${d}_$m.txt" "$OUT/cudnn_d${d}_$m.txt" | head -40
  done
done
ls -la "$OUT"
