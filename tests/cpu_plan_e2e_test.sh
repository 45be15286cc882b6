#!/bin/bash
# End to end on the CPU backend: `jitattn tune --plan` in one process, then `jitattn run --plan` in
# a second process must find every tuned config (exact) and load every compiled object from the
# cache without compiling.
# Usage: cpu_plan_e2e_test.sh path/to/jitattn
set -euo pipefail
bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/plan" <<'PLAN'
# three specs on small shapes
--dtype fp32 --head-dim 64 --seqlen-q 256 --heads-q 4 --heads-kv 4
--dtype bf16 --head-dim 80 --seqlen-q 200 --mask causal --lse --heads-q 4 --heads-kv 2
--dtype fp16 --head-dim 128 --seqlen-q 128 --seqlen-k 300 --alibi --softcap 30 --heads-q 2 --heads-kv 2
PLAN
"$bin" tune --plan "$work/plan" --device cpu --budget 1 --cache "$work/cache.db" > "$work/tune.txt" 2>&1 || {
  cat "$work/tune.txt"; echo "FAIL: tune"; exit 1; }
cat "$work/tune.txt"
grep -q "^tuned 3 spec(s), 0 not tuned" "$work/tune.txt" || { echo "FAIL: not every spec tuned"; exit 1; }

JITATTN_CACHE=$work/cache.db "$bin" run --plan "$work/plan" --device cpu > "$work/run.txt" 2>&1 || {
  cat "$work/run.txt"; echo "FAIL: run"; exit 1; }
cat "$work/run.txt"
grep -q "3 problems: .* 0 compiles; 3 tuned (exact), 3 binaries from the cache" "$work/run.txt" || {
  echo "FAIL: the second process compiled or missed tuned configs"; exit 1; }
# gen/compile --arch cpu: the generated C++ (self-contained) and its in-process compile.
"$bin" gen --arch cpu --head-dim 72 --mask causal > "$work/gen.cpp"
grep -q 'extern "C"' "$work/gen.cpp" || { echo "FAIL: gen --arch cpu has no extern \"C\" kernel"; exit 1; }
if grep -q '^#include' "$work/gen.cpp"; then echo "FAIL: CPU source includes headers"; exit 1; fi
"$bin" compile --arch cpu --head-dim 72 --mask causal --json > "$work/compile.json"
python3 - "$work/compile.json" <<'PY' || { cat "$work/compile.json"; echo "FAIL: compile --arch cpu"; exit 1; }
import json, sys
j = json.load(open(sys.argv[1]))
assert j["object_bytes"] > 0 and j["compile_ms"] > 0 and j["arch"].startswith("cpu-"), j
PY
echo "PASS"
