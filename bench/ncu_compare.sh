#!/bin/bash
# ncu: our kernel vs FA2 (torch flash) on the same problem; instruction mix and stall reasons.
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
M="smsp__inst_executed.sum,sm__inst_executed_pipe_tensor_op_hmma.sum,smsp__inst_executed_op_ldsm.sum,sm__cycles_elapsed.avg,smsp__warps_active.avg.per_cycle_active,launch__registers_per_thread,launch__occupancy_limit_registers,smsp__issue_active.avg.pct_of_peak_sustained_active"
S="regex:smsp__average_warps_issue_stalled_(barrier|long_scoreboard|short_scoreboard|mio_throttle|math_pipe_throttle|wait|not_selected|dispatch_stall|lg_throttle|no_instruction|selected|tex_throttle|drain|branch_resolving|membar|sleeping|misc)_per_issue_active.ratio"
for d in ${DIMS:-128 256}; do
  cfg=$([ $d = 256 ] && echo bm128_bn64_w8_s2 || echo bm128_bn32_w4_s2)
  echo "== ours d$d $cfg"
  ncu --clock-control none --launch-skip 3 --launch-count 1 -k regex:attn_fwd --metrics $M,$S ${B:-.devcarry}/jitattn bench --tokens 16384 --width 2048 --seqlen-q 4096 --head-dim $d --config $cfg --budget-ms 5 2>&1 | grep -E "^\s+(smsp|sm__|launch)" | awk '{print $1, $NF}'
  echo "== FA2 d$d"
  ncu --clock-control none --launch-skip 2 --launch-count 1 -k regex:flash_fwd --metrics $M,$S python3 bench/fa2_one.py $d 2>&1 | grep -E "^\s+(smsp|sm__|launch)|flash_fwd" | awk '{print $1, $NF}' | head -40
done
