#!/bin/bash
# ncu over our Hopper kernel (full set, and its SASS with stall samples per instruction as CSV,
# for bench/sass_stalls.py) beside cudnn's, seqlen 4096, 16k tokens, width 2048.
# Usage (GPU machine, repo root, binaries in $B): bench/ncu_attn.sh fwd|bwd
#   env DIMS, MASKS, OUT, OURS_ONLY (our kernel alone), CONFIG (ours: this config, not the default)
# fwd profiles the forward kernel; bwd the backward's dK/dV kernel (and cudnn's fwd+bwd kernels).
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
B=${B:-.devcarry}; OUT=${OUT:-/tmp/out}
PASS=${1:-fwd}
if [ "$PASS" = bwd ]; then KERNEL=attn_bwd; SKIP=2; FLAGS=--backward; PEER=fwd_bwd; else KERNEL=attn_fwd; SKIP=3; FLAGS=; PEER=fwd; fi
for d in ${DIMS:-128 64}; do
  for m in ${MASKS:-none}; do
    r="$OUT/${PASS}_d${d}_$m"; c="$OUT/cudnn_${PASS}_d${d}_$m"
    ncu --clock-control none --set full --import-source no -k "regex:$KERNEL.*_[0-9a-f]{8}\$" --launch-skip $SKIP --launch-count 1 \
      -o "$r" -f "$B/jitattn" bench $FLAGS --tokens 16384 --width 2048 --seqlen-q 4096 \
      --head-dim $d --mask $m ${CONFIG:+--config $CONFIG} --budget-ms 30 > "$OUT/run.log" 2>&1
    ncu --import "$r.ncu-rep" --print-details all > "$r.txt" 2>&1; cat "$OUT/run.log" >> "$r.txt"
    ncu --import "$r.ncu-rep" --page source --csv --print-source sass > "${r}_sass.csv" 2>&1
    rm -f "$r.ncu-rep"
    [ -n "${OURS_ONLY:-}" ] && continue
    ncu --clock-control none --set full --profile-from-start off -o "$c" -f \
      python3 "$B/peer_one.py" $d cudnn $m $PEER > "$OUT/run.log" 2>&1
    ncu --import "$c.ncu-rep" --print-details all > "$c.txt" 2>&1; cat "$OUT/run.log" >> "$c.txt"; rm -f "$OUT/run.log" "$c.ncu-rep"
    grep -E "$KERNEL|cudnn|Duration|Compute \(SM\) Throughput|Issue Slots Busy|Registers Per|Grid Size|Pipe Tensor Cycles" \
      "$r.txt" "$c.txt" | head -40
  done
done
ls -la "$OUT"
