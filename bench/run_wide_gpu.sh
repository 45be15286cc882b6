#!/bin/bash
# Head dims above 256 in one device call: the wide GPU tests (sharded), a quick pass over the
# forward and Hopper tests (shared code changed), compute-sanitizer memcheck/racecheck/synccheck
# over small wide cases, then bf16 forward bench rows (16k tokens, width 2048, seqlen 4096) at head
# dims 320/384/512 with d256 as the reference point, plus alternative configs at d512.
# Usage (GPU machine, repo root, binaries in $B): bench/run_wide_gpu.sh [tests|bench|all]
set -u
B=${B:-.devcarry-hd512}
OUT=${OUT:-/tmp/out}
export PATH=/usr/local/cuda/bin:$PATH
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
tshards() {  # tshards N SECONDS LOG CMD... : CMD in N gtest shards at once, each under a time limit
  local n=$1 secs=$2 log=$3; shift 3
  for i in $(seq 0 $((n - 1))); do
    GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$i timeout "$secs" "$@" > "$log.$i" 2>&1 &
  done
  wait
  cat "$log".* > "$log"; rm -f "$log".*
  echo "$(basename "$log"): passed $(grep -c '^\[       OK \]' "$log"), failed $(grep -c '^\[  FAILED  \] .*(' "$log"), skipped $(grep -c '^\[  SKIPPED \] .*(' "$log"), finished shards $(grep -c '^\[==========\] .* ran' "$log")/$n"
  grep -E -A4 "^\[  FAILED  \] .*\(|ERROR SUMMARY: [1-9]|Failure" "$log" | head -60
}
mode=${1:-all}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
if [ "$mode" = tests ] || [ "$mode" = all ]; then
  tshards 16 "${TEST_SECS:-120}" "$OUT/wide.log" "$B/forward_wide_gpu_test"
  for t in forward_gpu_test forward_sm90_gpu_test backward_gpu_test; do  # the templates they share
    [ -x "$B/$t" ] && tshards 16 "${SANITY_SECS:-60}" "$OUT/$t.log" "$B/$t" --gtest_filter="${SANITY_FILTER:-*d64*:*d128*:*d256*:*d40_*:*d72_*}"
  done
  SMALL='*sm90_causal_d264*:*sm90_causal_d512*:*sm90_d264_dv512*:*sm90_varlen_packed_causal_d512*:*sm90_fully_masked_rows_d264*:*config_h_bm64_bn48_wg2_s1_x2_d264*:*mma_causal_d512*:*mma_d264_dv512*:*mma_varlen_padded_d264*'
  tshards 9 "${MEMCHECK_SECS:-90}" "$OUT/memcheck.log" compute-sanitizer --tool memcheck --report-api-errors no \
    --error-exitcode 99 "$B/forward_wide_gpu_test" --gtest_filter="$SMALL"
  grep -h "ERROR SUMMARY" "$OUT/memcheck.log" | sort | uniq -c
  for tool in racecheck synccheck; do
    timeout "${RACE_SECS:-60}" compute-sanitizer --tool $tool --error-exitcode 99 "$B/forward_wide_gpu_test" \
      --gtest_filter='*sm90_causal_d264*:*config_h_bm64_bn48_wg2_s1_x2_d264*' > "$OUT/$tool.log" 2>&1
    echo "$tool rc=$? $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$OUT/$tool.log" | sort | uniq -c | tr '\n' ' ')"
  done
fi
if [ "$mode" = bench ] || [ "$mode" = all ]; then
  row() {  # row D MASK [CONFIG]
    local extra=""
    [ -n "${3:-}" ] && extra="--config $3"
    echo "d$1 $2 ${3:-default}: $(timeout 60 "$B/jitattn" bench --tokens 16384 --width 2048 --seqlen-q 4096 \
      --head-dim "$1" --mask "$2" --budget-ms "${BUDGET_MS:-200}" $extra 2>&1 | grep -E "config|speed|rror" | tr -s ' ' | tr '\n' ' ')"
  }
  for d in 256 264 320 384 512; do
    for m in none causal; do row $d $m; done
  done
  for c in ${D512_CONFIGS:-h_bm64_bn32_wg2_s2_x2 bm64_bn32_w4_s2_x4}; do row 512 none $c; done
  for c in ${D384_CONFIGS:-h_bm64_bn48_wg2_s2_x2}; do row 384 none $c; done
  for c in ${D320_CONFIGS:-h_bm64_bn64_wg2_s2_x2}; do row 320 none $c; done
  # The previous column-split design (S computed by both consumers), kept as jitattn_a if carried.
  if [ -x "$B/jitattn_a" ]; then
    for d in 320 512; do
      echo "A d$d: $(timeout 60 "$B/jitattn_a" bench --tokens 16384 --width 2048 --seqlen-q 4096 --head-dim $d \
        --budget-ms "${BUDGET_MS:-200}" 2>&1 | grep -E "config|speed" | tr -s ' ' | tr '\n' ' ')"
    done
  fi
fi
