#!/bin/bash
# One device call: correctness (GPU tests, sharded), memcheck, or benchmarks beside the peers.
# Usage (on the GPU machine, from the repo root, binaries in .devcarry/):
#   bench/run_gpu.sh tests       GPU test binaries, then compute-sanitizer memcheck over them
#   bench/run_gpu.sh bench       jitattn bench grid and ../shared/bench/peers.py on the same grid
set -u
B=${B:-.devcarry}
OUT=${OUT:-/tmp/out}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
shards() {  # shards N LOGPREFIX CMD... : runs CMD in N gtest shards at once
  local n=$1 log=$2; shift 2
  for i in $(seq 0 $((n - 1))); do
    GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$i "$@" > "$log.$i" 2>&1 &
  done
  wait
  cat "$log".* > "$log"; rm -f "$log".*
  echo "$(basename "$log"): passed $(grep -c '^\[       OK \]' "$log"), failed $(grep -c '^\[  FAILED  \] .*(' "$log"), skipped $(grep -c '^\[  SKIPPED \] .*(' "$log")"
  grep -E -A3 "^\[  FAILED  \] .*\(|ERROR SUMMARY: [1-9]|Invalid|Failure" "$log" | head -40
}
case "${1:-tests}" in
  tests)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    shards 12 "$OUT/gpu_tests.log" "$B/forward_gpu_test"
    for t in nvrtc_test driver_test readme_example_test; do
      [ -x "$B/$t" ] && shards 1 "$OUT/$t.log" "$B/$t"
    done
    # memcheck: every GPU test, sharded; a memory error fails the shard's process. API errors are
    # not reported: tests query host pointers on purpose (cuPointerGetAttribute says invalid).
    shards 12 "$OUT/memcheck.log" compute-sanitizer --tool memcheck --report-api-errors no \
      --error-exitcode 99 "$B/forward_gpu_test"
    grep -h "ERROR SUMMARY" "$OUT/memcheck.log" | sort | uniq -c
    ;;
  bench)
    GRID="--hdims ${HDIMS:-64,80,96,128,256} --seqlens ${SEQLENS:-4096}"
    "$B/jitattn" bench --grid $GRID --masks ${MASKS:-none,causal,alibi,bias} --json > "$OUT/ours.jsonl"
    tail -n 25 "$OUT/ours.jsonl" | grep -v '^{'
    PYTHONUNBUFFERED=1 python3 "$B/peers.py" $GRID --masks ${PEER_MASKS:-none,causal,bias} --modes fwd \
      --out "$OUT/peers.jsonl" > "$OUT/peers.log" 2>&1
    grep -A200 "^dtype" "$OUT/peers.log"
    ;;
esac
