#!/bin/bash
# Peak device memory of a bf16 forward+backward at seqlen 16384 (batch 1, 16 heads, d128: 16k
# tokens, width 2048): ours against eager attention in PyTorch and torch's flash backend.
# One device call (GPU machine, repo root, binaries and peers' files in $B).
#   ours:  the jitattn process's device memory, sampled by nvidia-smi every 20 ms while
#          `jitattn bench --fwd-bwd` runs (so it includes the CUDA context and the bench's L2 flush
#          buffer; the tensors themselves are q, k, v, o, dO, dq, dk, dv, LSE and the workspace)
#   torch: the same process-level sample, and torch's own allocator peak
set -u
B=${B:-.devcarry}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
sample() {  # sample CMD...: runs CMD, prints its output and the peak used_memory nvidia-smi saw
  "$@" > /tmp/peak_out.txt 2>&1 &
  local pid=$! peak=0
  while kill -0 $pid 2>/dev/null; do
    m=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits | awk -v p=$pid -F', ' '$1==p {print $2}')
    [ -n "$m" ] && [ "$m" -gt "$peak" ] && peak=$m
    sleep 0.02
  done
  wait $pid
  grep -E "speed|peak_bytes|error" /tmp/peak_out.txt | head -3
  echo "  process peak (nvidia-smi): ${peak} MiB"
}
echo "ours (jitattn fwd+bwd, bf16 b1 h16 s16384 d128):"
sample "$B/jitattn" bench --fwd-bwd --batch 1 --heads-q 16 --heads-kv 16 --seqlen-q 16384 --head-dim 128 --budget-ms 300
echo "ours, process baseline (the same command at seqlen 128: context, modules, L2 flush buffer):"
sample "$B/jitattn" bench --fwd-bwd --batch 1 --heads-q 16 --heads-kv 16 --seqlen-q 128 --head-dim 128 --budget-ms 50
for impl in flash eager; do
  echo "torch $impl:"
  sample python3 "$B/eager_attention.py" --impl $impl
done
