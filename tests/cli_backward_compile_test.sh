#!/bin/bash
# `jitattn gen/compile --backward` (NVRTC only, no GPU): the backward pass's module as the runtime
# builds it: the Hopper family's dK/dV kernel on sm_90 (wgmma, no spills; deterministic mode and
# dropout too, the column split _x2 above head dim 128 and for dropout at d88-192), the mma.sync
# family for dropout at d200-256, head dims above 256 and on sm_80, and the forward unchanged
# without the flag.
# Usage: cli_backward_compile_test.sh path/to/jitattn
set -euo pipefail
bin=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$bin" compile --backward --head-dim 128 --mask causal --json > "$work/h.json"
"$bin" compile --backward --deterministic --head-dim 96 --json > "$work/det.json"
"$bin" compile --backward --dropout 0.1 --head-dim 64 --json > "$work/drop.json"
"$bin" compile --backward --dropout 0.1 --head-dim 128 --json > "$work/drop128.json"
"$bin" compile --backward --dropout 0.1 --head-dim 256 --json > "$work/drop256.json"
"$bin" compile --backward --head-dim 256 --mask causal --json > "$work/w.json"
"$bin" compile --backward --head-dim 320 --json > "$work/big.json"
"$bin" compile --backward --arch sm_80 --head-dim 64 --json > "$work/a.json"
"$bin" compile --head-dim 128 --mask causal --json > "$work/fwd.json"
python3 - "$work" <<'PY' || { cat "$work"/*.json; echo "FAIL: compile --backward"; exit 1; }
import json, sys
d = sys.argv[1]
h, det, drop, drop128, drop256, w, big, a, fwd = (json.load(open(f"{d}/{n}.json")) for n in
    ("h", "det", "drop", "drop128", "drop256", "w", "big", "a", "fwd"))
assert h["pass"] == "backward" and h["kernel"].startswith("attn_bwd_sm90_bf16_d128_causal_"), h
assert h["spec"].startswith("bwd sm90") and h["arch"] == "sm_90a" and h["config"].startswith("h_"), h
assert h["spill_store_bytes"] == 0 and h["spill_load_bytes"] == 0 and h["threads"] == 384, h
assert det["kernel"].startswith("attn_bwd_sm90_bf16_d96_det_h_") and det["config"].startswith("h_"), det
assert "det=1" in det["spec"] and det["arch"] == "sm_90a" and det["spill_store_bytes"] == 0, det
assert "dropout=1" in drop["spec"] and drop["config"].startswith("h_") and drop["arch"] == "sm_90a", drop
assert drop["spill_store_bytes"] == 0, drop
assert "dropout=1" in drop128["spec"] and drop128["config"] == "h_bm64_bn64_wg2_s2_x2" and drop128["arch"] == "sm_90a", drop128
assert drop128["spill_store_bytes"] == 0, drop128
assert "dropout=1" in drop256["spec"] and not drop256["config"].startswith("h_") and drop256["arch"] == "sm_90", drop256
assert w["config"] == "h_bm64_bn64_wg2_s1_x2" and w["arch"] == "sm_90a" and w["spill_store_bytes"] == 0, w
assert w["shared_bytes"] <= 232448, w
assert not big["config"].startswith("h_") and big["arch"] == "sm_90", big
assert a["kernel"].startswith("attn_bwd_sm80_") and a["arch"] == "sm_80", a
assert fwd["pass"] == "forward" and fwd["kernel"].startswith("attn_fwd_"), fwd
PY
# tune --deterministic is a backward option: refused (named) without --backward, nothing tuned.
if "$bin" tune --deterministic --head-dim 64 --cache "$work/t.db" > "$work/tune.txt" 2>&1; then
  echo "FAIL: tune --deterministic without --backward ran"; exit 1
fi
grep -q "deterministic" "$work/tune.txt" || { cat "$work/tune.txt"; echo "FAIL: the error does not name --deterministic"; exit 1; }
"$bin" gen --backward --head-dim 64 > "$work/bwd.cu"
grep -q "constexpr bool kDqAlternate = true;" "$work/bwd.cu" || { echo "FAIL: gen --backward d64"; exit 1; }
grep -q "JITATTN_BWD_MAIN" "$work/bwd.cu" || { echo "FAIL: gen --backward has no backward kernel"; exit 1; }
echo "PASS"
