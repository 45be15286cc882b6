# One cudnn (or flash) attention call on peers.py's conventions, for ncu: warm-up outside the
# profiled range, one iteration inside cudaProfilerStart/Stop (ncu --profile-from-start off).
# Usage: peer_one.py D [cudnn|flash] [none|causal] [fwd_bwd|fwd]
import sys, torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
d = int(sys.argv[1]); backend = sys.argv[2] if len(sys.argv) > 2 else "cudnn"
causal = len(sys.argv) > 3 and sys.argv[3] == "causal"
forward_only = len(sys.argv) > 4 and sys.argv[4] == "fwd"
s = 4096; b = 16384 // s; h = 2048 // d
q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16, requires_grad=not forward_only)
           for _ in range(3))
do = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16)
be = SDPBackend.CUDNN_ATTENTION if backend == "cudnn" else SDPBackend.FLASH_ATTENTION
with sdpa_kernel(be):
    for i in range(4):
        if i == 3:
            torch.cuda.synchronize(); torch.cuda.cudart().cudaProfilerStart()
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        if not forward_only:
            o.backward(do)
        if i == 3:
            torch.cuda.synchronize(); torch.cuda.cudart().cudaProfilerStop()
torch.cuda.synchronize()
