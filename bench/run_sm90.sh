#!/bin/bash
# One device call for the Hopper family: SASS check, GPU tests (sm90 family, then the whole forward
# suite, which now runs the family by default on sm_90), compute-sanitizer memcheck on a small
# filter, and the bench grid beside peers.py. Every step has its own time limit so one call fits.
# Usage (GPU machine, repo root, binaries in $B): bench/run_sm90.sh [steps...]
#   steps: sass smoke sm90 fwd memcheck bench configs peers (default: all, in that order)
set -u
B=${B:-.devcarry-hop}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PATH=/usr/local/cuda/bin:$PATH
export JITATTN_CACHE=off
shards() {  # shards N SECONDS LOG CMD... : N gtest shards at once, each under a time limit
  local n=$1 secs=$2 log=$3; shift 3
  for i in $(seq 0 $((n - 1))); do
    GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$i timeout "$secs" "$@" > "$log.$i" 2>&1 &
  done
  wait
  cat "$log".* > "$log"; rm -f "$log".*
  echo "$(basename "$log"): passed $(grep -c '^\[       OK \]' "$log"), failed $(grep -c '^\[  FAILED  \] .*(' "$log"), skipped $(grep -c '^\[  SKIPPED \] .*(' "$log"), finished shards $(grep -c '^\[==========\] .* ran' "$log")/$n"
  grep -E -A4 "^\[  FAILED  \] .*\(|ERROR SUMMARY: [1-9]|Failure|what\(\)" "$log" | head -${FAILLINES:-30}
}
steps=${*:-sass smoke sm90 fwd memcheck bench configs peers}
for step in $steps; do
  case $step in
    sass)
      nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
      timeout 30 "$B/sm90_sass_test" > "$OUT/sass.log" 2>&1; tail -n 3 "$OUT/sass.log"
      grep -E "Failure|Expected|Which is" -A2 "$OUT/sass.log" | head -20
      ;;
    smoke)  # one small case first: a hang or a launch error shows here in seconds
      timeout 20 "$B/forward_sm90_gpu_test" --gtest_filter='*Sm90HeadDims*d64_bf16*:*seqlens_17_17_d64*' > "$OUT/smoke.log" 2>&1
      echo "smoke rc=$?"; grep -E "OK|FAILED|rel_err|what" "$OUT/smoke.log" | head -20
      ;;
    sm90) shards 14 ${SM90_SECS:-70} "$OUT/sm90_tests.log" "$B/forward_sm90_gpu_test" ;;
    fwd) shards 14 ${FWD_SECS:-60} "$OUT/fwd_tests.log" "$B/forward_gpu_test" ;;
    racecheck)  # shared-memory hazards and barrier misuse on two small cases (slow tools)
      for tool in racecheck synccheck; do
        timeout ${RACE_SECS:-40} compute-sanitizer --tool $tool --error-exitcode 99 "$B/forward_sm90_gpu_test" \
          --gtest_filter="${RACE_FILTER:-*Sm90HeadDims*d64_bf16*:*config_h_bm128_bn128_wg2_s2_ov_pp_d96}" > "$OUT/$tool.log" 2>&1
        echo "$tool rc=$? $(grep -c '^\[       OK \]' "$OUT/$tool.log") ok; $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$OUT/$tool.log" | sort | uniq -c | tr '\n' ' ')"
      done
      ;;
    memcheck)
      FAILLINES=10 shards 4 ${MEMCHECK_SECS:-40} "$OUT/memcheck.log" compute-sanitizer --tool memcheck \
        --report-api-errors no --error-exitcode 99 "$B/forward_sm90_gpu_test" \
        --gtest_filter="${MEMCHECK_FILTER:-*d64_bf16*:*d96_f16*:*d256_bf16*:*causal_br_fully*d64*:*gqa_d128*:*seqlens_17_1000*:*everything_d64*}"
      grep -h "ERROR SUMMARY" "$OUT/memcheck.log" | sort | uniq -c
      ;;
    bench)
      timeout 60 "$B/jitattn" bench --grid --hdims ${HDIMS:-64,128} --seqlens ${SEQLENS:-4096} \
        --masks ${MASKS:-none,causal} --budget-ms 200 --json > "$OUT/ours.jsonl" 2> "$OUT/ours.err"
      python3 -c "
import json,sys
for l in open('$OUT/ours.jsonl'):
    if l.startswith('{'):
        j=json.loads(l); print('ours', j.get('d'), j.get('grid_mask'), j.get('config'), j.get('tflops'), j.get('error',''))
" 2>&1 | head -30; tail -n 3 "$OUT/ours.err"
      ;;
    configs)  # other configs on the bench rows (d, mask, config) as "d:mask:config"
      for row in ${CONFIGS:-128:none:h_bm128_bn176_wg2_s2 128:none:h_bm128_bn128_wg2_s3 128:none:h_bm192_bn64_wg3_s2 128:none:bm128_bn128_w8_s2 64:none:h_bm192_bn128_wg3_s2 64:none:h_bm128_bn176_wg2_s2}; do
        IFS=: read -r d m c <<< "$row"
        timeout 20 "$B/jitattn" bench --tokens 16384 --width 2048 --seqlen-q 4096 --head-dim "$d" --mask "$m" \
          --config "$c" --budget-ms 200 --json 2>&1 | python3 -c "
import json,sys
t=sys.stdin.read()
try: j=json.loads(t.strip().splitlines()[-1]); print('cfg', '$d', '$m', j.get('config'), j.get('tflops'))
except Exception: print('cfg', '$d', '$m', '$c', 'ERR', t[-300:])"
      done
      ;;
    peers)
      PYTHONUNBUFFERED=1 timeout 90 python3 "$B/peers.py" --hdims ${HDIMS:-64,128} --seqlens ${SEQLENS:-4096} \
        --masks ${PEER_MASKS:-none,causal} --modes fwd --backends ${PEER_BACKENDS:-flash,cudnn} \
        --out "$OUT/peers.jsonl" > "$OUT/peers.log" 2>&1
      grep -A40 "^dtype" "$OUT/peers.log" || tail -n 20 "$OUT/peers.log"
      ;;
  esac
done
