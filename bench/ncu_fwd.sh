#!/bin/bash
# ncu over the forward: our Hopper kernel (full set, and its SASS with stall samples per
# instruction as CSV) beside cudnn's forward kernel, seqlen 4096, 16k tokens, width 2048.
# Usage (GPU machine, repo root, binaries in $B): bench/ncu_fwd.sh  (env DIMS, MASKS, OUT,
# OURS_ONLY, CONFIG: a config for our kernel instead of the default)
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
B=${B:-.devcarry}; OUT=${OUT:-/tmp/out}
for d in ${DIMS:-128 64}; do
  for m in ${MASKS:-none}; do
    ncu --clock-control none --set full --import-source no -k 'regex:attn_fwd.*_[0-9a-f]{8}$' --launch-skip 3 --launch-count 1 \
      -o "$OUT/fwd_d${d}_$m" -f "$B/jitattn" bench --tokens 16384 --width 2048 --seqlen-q 4096 \
      --head-dim $d --mask $m ${CONFIG:+--config $CONFIG} --budget-ms 20 > "$OUT/run.log" 2>&1
    ncu --import "$OUT/fwd_d${d}_$m.ncu-rep" --print-details all > "$OUT/fwd_d${d}_$m.txt" 2>&1; cat "$OUT/run.log" >> "$OUT/fwd_d${d}_$m.txt"
    ncu --import "$OUT/fwd_d${d}_$m.ncu-rep" --page source --csv --print-source sass > "$OUT/fwd_d${d}_${m}_sass.csv" 2>&1
    rm -f "$OUT/fwd_d${d}_$m.ncu-rep"
    [ -n "${OURS_ONLY:-}" ] && continue  # OURS_ONLY=1: our kernel alone
    ncu --clock-control none --set full --profile-from-start off -o "$OUT/cudnn_fwd_d${d}_$m" -f \
      python3 "$B/peer_one.py" $d cudnn $m fwd > "$OUT/run.log" 2>&1
    ncu --import "$OUT/cudnn_fwd_d${d}_$m.ncu-rep" --print-details all > "$OUT/cudnn_fwd_d${d}_$m.txt" 2>&1; cat "$OUT/run.log" >> "$OUT/cudnn_fwd_d${d}_$m.txt"; rm -f "$OUT/run.log"
    rm -f "$OUT/cudnn_fwd_d${d}_$m.ncu-rep"
    grep -E "attn_fwd|cudnn|sm90|Duration|Compute \(SM\) Throughput|Issue Slots Busy|Registers Per|Block Size|Grid Size" \
      "$OUT/fwd_d${d}_$m.txt" "$OUT/cudnn_fwd_d${d}_$m.txt" | head -40
  done
done
ls -la "$OUT"
