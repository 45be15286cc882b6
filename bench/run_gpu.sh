#!/bin/bash
# One device call: correctness (GPU tests, sharded), memcheck, or benchmarks beside the peers.
# Usage (on the GPU machine, from the repo root, binaries in .devcarry/):
#   bench/run_gpu.sh tests       GPU test binaries, then compute-sanitizer memcheck over them
#   bench/run_gpu.sh bench       jitattn bench grid and ../shared/bench/peers.py on the same grid
#   bench/run_gpu.sh final-tests every GPU test binary and the small ones
#   bench/run_gpu.sh final-sanitizers  memcheck over every GPU test binary, racecheck/synccheck samples
#   bench/run_gpu.sh final-bench forward grid (3 seqlens) beside flash/cudnn, flex on the ALiBi row,
#                                fwd+bwd at d64/96/128, head dims above 256; tables by bench/compare.py
#                                (copy it into $B with the binaries)
#   bench/run_gpu.sh bwd         backward_gpu_test, memcheck over it, racecheck/synccheck samples, fwd+bwd
#                                beside flash and cudnn (BWD_ONLY_BENCH=1: the timings alone)
#   bench/run_gpu.sh bias        sm90 tests, memcheck over the bias cases, bias/ALiBi rows beside
#                                cudnn, efficient and FlexAttention
#   bench/run_gpu.sh persistent  the sm90 forward tests, memcheck over the persistent (_ps) cases, then
#                                each default config beside its _ps twin on the forward grid (ab.jsonl)
#   bench/run_gpu.sh fwd         after a forward change: the forward grid beside cudnn (clean GPU
#                                first), forward_sm90_gpu_test, memcheck/racecheck/synccheck on Hopper samples
#                                (split K/V release, overlap at d256, persistent); FWD_TESTS=0 skips tests
#   bench/run_gpu.sh tune-sweep  jitattn tune over the whole search space of each ROWS entry
#                                (d:mask:seqlen, bench shape) into a fresh cache; the 8 fastest per row
#   bench/run_gpu.sh ab          the previous binary ($B/jitattn_old) against the new ($B/jitattn), alternated,
#                                PASSES times over ROWS (d:mask:seqlen) and MODES (--fwd-bwd, --backward, fwd);
#                                each binary with its own cache file, so a second pass reuses its kernels
#   bench/run_gpu.sh all         every GPU test binary (forward, backward, sm90 family, SASS), memcheck
#                                over all of them (sharded, time-limited), then bench beside peers
#                                (forward grid; forward+backward at d128) -- one device call
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
tshards() {  # tshards N SECONDS LOG CMD... : like shards, each shard under a time limit
  local n=$1 secs=$2 log=$3; shift 3
  for i in $(seq 0 $((n - 1))); do
    GTEST_TOTAL_SHARDS=$n GTEST_SHARD_INDEX=$i timeout "$secs" "$@" > "$log.$i" 2>&1 &
  done
  wait
  cat "$log".* > "$log"; rm -f "$log".*
  echo "$(basename "$log"): passed $(grep -c '^\[       OK \]' "$log"), failed $(grep -c '^\[  FAILED  \] .*(' "$log"), finished shards $(grep -c '^\[==========\] .* ran' "$log")/$n"
  grep -E -A3 "^\[  FAILED  \] .*\(|ERROR SUMMARY: [1-9]|Failure" "$log" | head -20
}
case "${1:-tests}" in
  ab)
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    for pass in $(seq 1 ${PASSES:-2}); do
      for row in ${ROWS:-64:none:4096 64:causal:4096 128:none:4096 128:causal:4096}; do
        IFS=: read -r d m s <<< "$row"
        for mode in ${MODES:---fwd-bwd}; do
          flag=$mode; [ "$mode" = fwd ] && flag=
          for bin in jitattn_old jitattn; do
            JITATTN_CACHE="$OUT/ab_$bin.db" timeout 120 "$B/$bin" bench $flag --tokens 16384 --width 2048 --seqlen-q $s \
              --head-dim $d --mask $m --budget-ms ${BUDGET_MS:-250} --json 2>> "$OUT/ab.err" |
              python3 -c "import json,sys; j=json.load(sys.stdin); print('pass $pass $mode d$d $m $s $bin', j['config'], round(j['tflops'], 1))"
          done
        done
      done
    done | tee "$OUT/ab.txt"
    ;;
  all)
    export PATH=/usr/local/cuda/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    for t in forward_gpu_test backward_gpu_test forward_sm90_gpu_test; do
      tshards 14 ${TEST_SECS:-90} "$OUT/$t.log" "$B/$t"
    done
    for t in sm90_sass_test readme_example_test nvrtc_test driver_test; do
      [ -x "$B/$t" ] && { timeout 60 "$B/$t" > "$OUT/$t.log" 2>&1; echo "$t: $(tail -n 1 "$OUT/$t.log")"; }
    done
    for t in forward_gpu_test backward_gpu_test forward_sm90_gpu_test; do
      tshards 16 ${MEMCHECK_SECS:-100} "$OUT/memcheck_$t.log" compute-sanitizer --tool memcheck --report-api-errors no \
        --error-exitcode 99 "$B/$t"
      grep -h "ERROR SUMMARY" "$OUT/memcheck_$t.log" | sort | uniq -c
    done
    GRID="--hdims ${HDIMS:-64,80,96,128,256} --seqlens ${SEQLENS:-4096}"
    timeout 150 "$B/jitattn" bench --grid $GRID --masks ${MASKS:-none,causal,alibi,bias} --budget-ms 150 --json > "$OUT/ours.jsonl" 2> "$OUT/ours.err"
    python3 -c "
import json
for l in open('$OUT/ours.jsonl'):
    if l.startswith('{'):
        j=json.loads(l); print('ours', j.get('head_dim', j.get('d')), j.get('grid_mask', j.get('mask')), j.get('config'), round(j.get('tflops', 0), 1), j.get('error', ''))
"
    timeout 60 "$B/jitattn" bench --fwd-bwd --tokens 16384 --width 2048 --seqlen-q 4096 --head-dim 128 --budget-ms 200 | grep -E "config|speed"
    PYTHONUNBUFFERED=1 timeout 200 python3 "$B/peers.py" $GRID --masks ${PEER_MASKS:-none,causal,bias} --modes fwd --backends ${PEER_BACKENDS:-flash,cudnn} \
      --out "$OUT/peers.jsonl" > "$OUT/peers.log" 2>&1
    grep -A200 "^dtype" "$OUT/peers.log" | head -60
    PYTHONUNBUFFERED=1 timeout 60 python3 "$B/peers.py" --hdims 128 --seqlens 4096 --masks none --modes fwd_bwd --backends flash,cudnn \
      --out "$OUT/peers_fb.jsonl" > "$OUT/peers_fb.log" 2>&1
    grep -A20 "^dtype" "$OUT/peers_fb.log" | head -12
    ;;
  persistent)
    export PATH=/usr/local/cuda/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    if [ -z "${AB_ONLY:-}" ]; then  # AB_ONLY=1: the timings alone
      tshards 16 ${TEST_SECS:-100} "$OUT/forward_sm90_gpu_test.log" "$B/forward_sm90_gpu_test"
      tshards 16 ${MEMCHECK_SECS:-60} "$OUT/memcheck_ps.log" compute-sanitizer --tool memcheck --report-api-errors no \
        --error-exitcode 99 "$B/forward_sm90_gpu_test" --gtest_filter='*persistent*'
      grep -h "ERROR SUMMARY" "$OUT/memcheck_ps.log" | sort | uniq -c
    fi
    ab() {  # ab HDIMS SEQLENS MASKS CONFIG...: each config forced over the grid
      local hd=$1 sl=$2 mk=$3; shift 3
      for cfg in "$@"; do
        timeout 120 "$B/jitattn" bench --grid --hdims $hd --seqlens $sl --masks $mk --config $cfg --budget-ms ${BUDGET:-100} \
          --json 2>> "$OUT/ab.err" | grep '^{' >> "$OUT/ab.jsonl"
      done
    }
    ab 64,80,96,128 1024,4096,16384 none,causal h_bm128_bn128_wg2_s3_ov_pp h_bm128_bn128_wg2_s3_ov_pp_ps
    ab 256 1024,4096,16384 none,causal h_bm128_bn80_wg2_s2 h_bm128_bn80_wg2_s2_ps
    ab 64 1024,4096 none,causal ${D64_CONFIGS:-h_bm128_bn160_wg2_s3_ov_pp h_bm128_bn160_wg2_s3_ov_pp_ps}
    ab 64,128 4096 alibi h_bm128_bn128_wg2_s2_ov_pp h_bm128_bn128_wg2_s2_ov_pp_ps
    python3 - "$OUT/ab.jsonl" <<'PY'
import json, sys
rows = {}
for l in open(sys.argv[1]):
    j = json.loads(l)
    if 'tflops' not in j: continue
    rows.setdefault((j['d'], j['s'], j.get('grid_mask', j['mask'])), []).append((j['config'], j['tflops']))
for k in sorted(rows):
    print(*k, '  '.join(f"{c} {t:.1f}" for c, t in rows[k]))
PY
    ;;
  final-tests)
    # Every GPU test binary (sharded, time-limited) and the small ones; final-sanitizers: memcheck
    # over all of them, racecheck and synccheck on samples of the Hopper forward and backward.
    export PATH=/usr/local/cuda/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    BINS="forward_gpu_test backward_gpu_test forward_sm90_gpu_test forward_wide_gpu_test"
    for t in $BINS; do
      [ -x "$B/$t" ] && tshards 16 ${TEST_SECS:-100} "$OUT/$t.log" "$B/$t"
    done
    for t in sm90_sass_test readme_example_test nvrtc_test driver_test; do
      [ -x "$B/$t" ] && { timeout 60 "$B/$t" > "$OUT/$t.log" 2>&1; echo "$t: $(tail -n 1 "$OUT/$t.log")"; }
    done
    ;;
  final-sanitizers)
    export PATH=/usr/local/cuda/bin:$PATH
    BINS="forward_gpu_test backward_gpu_test forward_sm90_gpu_test forward_wide_gpu_test"
    for t in $BINS; do
      [ -x "$B/$t" ] || continue
      tshards 16 ${MEMCHECK_SECS:-80} "$OUT/memcheck_$t.log" compute-sanitizer --tool memcheck --report-api-errors no \
        --error-exitcode 99 "$B/$t"
      grep -h "ERROR SUMMARY" "$OUT/memcheck_$t.log" | sort | uniq -c
    done
    for tool in racecheck synccheck; do
      timeout ${SAMPLE_SECS:-90} compute-sanitizer --tool $tool --report-api-errors no "$B/forward_sm90_gpu_test" \
        --gtest_filter='*bias_tma_b1qk_causal_br_d128*:*everything_packed_d64*:*config_h_bm128_bn128_wg2_s2_ov_pp_bias_tma_d64*' > "$OUT/${tool}_sm90.log" 2>&1
      echo "$tool sm90 fwd: $(grep -h -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/${tool}_sm90.log" | tr '\n' ' ') $(grep -c '^\[       OK \]' "$OUT/${tool}_sm90.log") ok"
      timeout ${SAMPLE_SECS:-90} compute-sanitizer --tool $tool --report-api-errors no "$B/backward_gpu_test" \
        --gtest_filter="${BWD_SAMPLE:-*Sm90*causal*d64*}" > "$OUT/${tool}_bwd.log" 2>&1
      echo "$tool bwd: $(grep -h -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/${tool}_bwd.log" | tr '\n' ' ') $(grep -c '^\[       OK \]' "$OUT/${tool}_bwd.log") ok"
    done
    ;;
  bwd)
    # The backward after a change to it: backward_gpu_test (sharded), memcheck over it, racecheck
    # and synccheck on a Hopper sample, then forward+backward at d64/96/128 (none, causal) beside
    # flash and cudnn (peers.py in the same call); BWD_ONLY_BENCH=1: the timings alone.
    export PATH=/usr/local/cuda/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    if [ -z "${BWD_ONLY_BENCH:-}" ]; then
      tshards 16 ${TEST_SECS:-100} "$OUT/backward_gpu_test.log" "$B/backward_gpu_test"
      tshards 16 ${MEMCHECK_SECS:-90} "$OUT/memcheck_bwd.log" compute-sanitizer --tool memcheck --report-api-errors no \
        --error-exitcode 99 "$B/backward_gpu_test"
      grep -h "ERROR SUMMARY" "$OUT/memcheck_bwd.log" | sort | uniq -c
      for tool in racecheck synccheck; do
        timeout ${SAMPLE_SECS:-60} compute-sanitizer --tool $tool --report-api-errors no "$B/backward_gpu_test" \
          --gtest_filter="${BWD_SAMPLE:-*Sm90*causal*d64*:*Sm90*packed*:*Sm90*bm128*}" > "$OUT/${tool}_bwd.log" 2>&1
        echo "$tool bwd: $(grep -h -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/${tool}_bwd.log" | sort | uniq -c | tr '\n' ' ') $(grep -c '^\[       OK \]' "$OUT/${tool}_bwd.log") ok"
      done
    fi
    for d in ${FB_DIMS:-64 96 128}; do
      for m in none causal; do
        "$B/jitattn" bench --fwd-bwd --tokens 16384 --width 2048 --seqlen-q 4096 --head-dim $d --mask $m --budget-ms 200 --json >> "$OUT/ours_fb.jsonl"
      done
    done
    PYTHONUNBUFFERED=1 timeout 120 python3 "$B/peers.py" --hdims $(echo ${FB_DIMS:-64 96 128} | tr ' ' ,) --seqlens 4096 \
      --masks none,causal --modes fwd_bwd --backends flash,cudnn --out "$OUT/peers_fb.jsonl" > "$OUT/peers_fb.log" 2>&1
    python3 "$B/compare.py" --ours "$OUT/ours_fb.jsonl" --peers "$OUT/peers_fb.jsonl"
    ;;
  final-bench)
    # Forward grid (seqlens 1024/4096/16384, masks none/causal/alibi; the bias tensor at 4096 only:
    # at 16384 its host copy is 17 GB) beside flash and cudnn, FlexAttention on the ALiBi row at
    # 4096, forward+backward at d64/96/128 beside flash and cudnn, the head dims above 256 (no peer
    # runs them); then bench/compare.py's tables of ours over each peer.
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    HD=${HDIMS:-64,80,96,128,256}
    GRID="--hdims $HD --seqlens ${SEQLENS:-1024,4096,16384}"
    timeout 300 "$B/jitattn" bench --grid $GRID --masks none,causal,alibi --budget-ms 120 --json > "$OUT/ours.jsonl" 2> "$OUT/ours.err"
    timeout 120 "$B/jitattn" bench --grid --hdims $HD --seqlens 4096 --masks bias --budget-ms 120 --json >> "$OUT/ours.jsonl" 2>> "$OUT/ours.err"
    for d in 320 384 512; do
      for m in none causal; do
        "$B/jitattn" bench --tokens 16384 --width 2048 --seqlen-q 4096 --head-dim $d --mask $m --budget-ms 150 --json >> "$OUT/ours_wide.jsonl"
      done
    done
    for d in 64 96 128; do
      for m in none causal; do
        "$B/jitattn" bench --fwd-bwd --tokens 16384 --width 2048 --seqlen-q 4096 --head-dim $d --mask $m --budget-ms 200 --json >> "$OUT/ours_fb.jsonl"
      done
    done
    PYTHONUNBUFFERED=1 timeout 240 python3 "$B/peers.py" $GRID --masks none,causal,bias --modes fwd --backends flash,cudnn \
      --out "$OUT/peers.jsonl" > "$OUT/peers.log" 2>&1
    PYTHONUNBUFFERED=1 timeout 120 python3 "$B/peers.py" --hdims 64,96,128 --seqlens 4096 --masks none,causal --modes fwd_bwd \
      --backends flash,cudnn --out "$OUT/peers_fb.jsonl" > "$OUT/peers_fb.log" 2>&1
    PYTHONUNBUFFERED=1 timeout 150 python3 "$B/peers.py" --hdims $HD --seqlens 4096 --masks bias --modes fwd \
      --backends flex --out "$OUT/peers_flex.jsonl" > "$OUT/peers_flex.log" 2>&1
    python3 "$B/compare.py" --ours "$OUT/ours.jsonl" --peers "$OUT/peers.jsonl" "$OUT/peers_flex.jsonl"
    python3 "$B/compare.py" --ours "$OUT/ours_fb.jsonl" --peers "$OUT/peers_fb.jsonl"
    python3 "$B/compare.py" --ours "$OUT/ours_wide.jsonl" --peers "$OUT/peers.jsonl"
    ;;
  bias)
    # Bias-tensor and ALiBi rows: the sm90 family's tests, memcheck over its bias cases, our bench
    # beside cudnn / efficient (bias tensor) and FlexAttention (ALiBi as a score_mod).
    export PATH=/usr/local/cuda/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    tshards 14 ${TEST_SECS:-120} "$OUT/forward_sm90_gpu_test.log" "$B/forward_sm90_gpu_test"
    tshards 14 ${TEST_SECS:-120} "$OUT/forward_gpu_test_bias.log" "$B/forward_gpu_test" --gtest_filter='*ias*'
    tshards 16 ${MEMCHECK_SECS:-100} "$OUT/memcheck_bias.log" compute-sanitizer --tool memcheck --report-api-errors no \
      --error-exitcode 99 "$B/forward_sm90_gpu_test" --gtest_filter='*ias*'
    grep -h "ERROR SUMMARY" "$OUT/memcheck_bias.log" | sort | uniq -c
    GRID="--hdims ${HDIMS:-64,80,96,128,256} --seqlens ${SEQLENS:-4096}"
    timeout 150 "$B/jitattn" bench --grid $GRID --masks ${MASKS:-bias,alibi} --budget-ms 150 --json > "$OUT/ours.jsonl" 2> "$OUT/ours.err"
    python3 -c "
import json
for l in open('$OUT/ours.jsonl'):
    if l.startswith('{'):
        j=json.loads(l); print('ours', j.get('head_dim', j.get('d')), j.get('grid_mask', j.get('mask')), j.get('config'), round(j.get('tflops', 0), 1), j.get('error', ''))
"
    PYTHONUNBUFFERED=1 timeout 300 python3 "$B/peers.py" $GRID --masks bias --modes fwd --backends ${PEER_BACKENDS:-cudnn,efficient,flex} \
      --out "$OUT/peers.jsonl" > "$OUT/peers.log" 2>&1
    grep -A40 "^dtype" "$OUT/peers.log" | head -30
    ;;
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
  fwd)
    export PATH=/usr/local/cuda/bin:$PATH
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
    HD=${HDIMS:-64,80,96,128,256}
    GRID="--hdims $HD --seqlens ${SEQLENS:-1024,4096,16384}"
    timeout 200 "$B/jitattn" bench --grid $GRID --masks ${MASKS:-none,causal} --budget-ms 120 --json > "$OUT/ours.jsonl" 2> "$OUT/ours.err"
    PYTHONUNBUFFERED=1 timeout 200 python3 "$B/peers.py" $GRID --masks ${MASKS:-none,causal} --modes fwd --backends ${PEER_BACKENDS:-cudnn} \
      --out "$OUT/peers.jsonl" > "$OUT/peers.log" 2>&1
    python3 "$B/compare.py" --ours "$OUT/ours.jsonl" --peers "$OUT/peers.jsonl"
    [ "${FWD_TESTS:-1}" = 0 ] && exit 0
    tshards 16 ${TEST_SECS:-150} "$OUT/forward_sm90_gpu_test.log" "$B/forward_sm90_gpu_test"
    for tool in memcheck racecheck synccheck; do
      timeout ${SAMPLE_SECS:-60} compute-sanitizer --tool $tool --report-api-errors no "$B/forward_sm90_gpu_test" \
        --gtest_filter="${FWD_SAMPLE:-*HeadDims*d256_bf16*:*window_both_sides_d256*:*persistent_h_bm128_bn128_wg2_s3_ov_pp_ps_gqa_causal_br_d64*}" \
        > "$OUT/${tool}_sm90.log" 2>&1
      echo "$tool sm90 fwd: $(grep -h -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/${tool}_sm90.log" | tr '\n' ' ') $(grep -c '^\[       OK \]' "$OUT/${tool}_sm90.log") ok"
    done
    ;;
  tune-sweep)
    export JITATTN_CACHE="$OUT/sweep.db"; rm -f "$JITATTN_CACHE"
    for row in ${ROWS:-64:none:4096 128:none:4096 256:none:4096}; do
      IFS=: read -r d m s <<< "$row"
      timeout ${TUNE_SECS:-150} "$B/jitattn" tune --tokens 16384 --width 2048 --seqlen-q $s --head-dim $d --mask $m \
        --budget ${BUDGET:-20} ${TUNE_FLAGS:-} 2>&1 | grep -v '^tuning \[' | tail -n 3
    done
    "$B/jitattn" cache ls --json | python3 -c "
import json, sys
rows = {}
for l in sys.stdin:
    j = json.loads(l)
    if j.get('status') == 'ok': rows.setdefault(j['spec'], []).append((j['median_ms'], j['config'], j['samples']))
for spec, rs in rows.items():
    rs.sort(); print(spec)
    for ms, c, n in rs[:8]: print(f'  {c:36s} {ms:.4f} ms  ({n} samples, {rs[0][0] / ms:.3f} of the best)')
"
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
