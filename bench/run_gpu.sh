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
  tune)
    # Tune a plan into a fresh cache, then a new process runs every line with the tuned configs
    # and cached binaries (no NVRTC), then bench reports tuned vs default.
    export JITATTN_CACHE="$OUT/tune_cache.db"; rm -f "$JITATTN_CACHE"
    PLAN=${PLAN:-bench/plans/example.plan}
    /usr/bin/time -f "tune wall %e s" "$B/jitattn" tune --plan "$PLAN" --budget ${BUDGET:-15} 2>&1 | grep -v "^tuning \["
    grep -v '^#' "$PLAN" | while read -r line; do
      [ -z "$line" ] && continue
      "$B/jitattn" check $line --json | python3 -c "import json,sys; j=json.load(sys.stdin); print('warm check', j['config'], j['config_source'], 'cached binary' if j['binary_from_cache'] else 'COMPILED', 'pass' if j['pass'] else 'FAIL')"
      "$B/jitattn" bench $line --json --budget-ms 200 | python3 -c "import json,sys; j=json.load(sys.stdin); print('tuned ', j['config'], j['config_source'], j['tflops'])"
      JITATTN_CACHE=off "$B/jitattn" bench $line --json --budget-ms 200 | python3 -c "import json,sys; j=json.load(sys.stdin); print('default', j['config'], j['config_source'], j['tflops'])"
    done
    "$B/jitattn" cache ls | tail -n 5
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
