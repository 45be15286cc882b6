#!/bin/bash
# Times candidate tile configs per head dim on peers.py's grid (bf16, 16k tokens, width 2048,
# seqlen 4096): data for the heuristic defaults until the tuner lands. Prints "d mask config ms TFLOP/s".
B=${B:-.devcarry}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
for d in ${HDIMS:-64 80 96 128 256}; do
  for mask in ${MASKS:-none causal}; do
    for cfg in ${CONFIGS:-bm128_bn64_w8_s2 bm128_bn64_w8_s3 bm128_bn128_w8_s2 bm128_bn32_w8_s2 bm128_bn64_w4_s2 bm128_bn64_w4_s3 bm64_bn64_w4_s2 bm64_bn128_w4_s2 bm128_bn64_w8_s2_qr bm128_bn64_w4_s2_qr bm64_bn64_w2_s2}; do
      r=$("$B/jitattn" bench --tokens 16384 --width 2048 --seqlen-q 4096 --head-dim $d --mask $mask \
            --config $cfg --budget-ms 150 --json 2>&1 | grep -o '"ms": *[0-9.]*\|"tflops": *[0-9.]*' | tr '\n' ' ')
      echo "d$d $mask $cfg $r"
    done
  done
done
