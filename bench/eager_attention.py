"""Peak device memory of one forward+backward of attention in PyTorch, for bench/peak_memory.sh.

eager: softmax(q k^T * scale) v written out in torch ops (the N x N score and probability
matrices live in memory); flash: torch's scaled_dot_product_attention with the flash backend.
Prints the peak bytes torch's allocator held (torch.cuda.max_memory_allocated) during the step.
"""
import argparse

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--impl", choices=["eager", "flash"], required=True)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=16384)
    ap.add_argument("--head-dim", type=int, default=128)
    a = ap.parse_args()
    dev = "cuda"
    shape = (a.batch, a.heads, a.seqlen, a.head_dim)
    q, k, v = (torch.randn(shape, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    d_o = torch.randn(shape, device=dev, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    if a.impl == "eager":
        s = (q @ k.transpose(-1, -2)) * (a.head_dim ** -0.5)
        o = torch.softmax(s.float(), dim=-1).to(q.dtype) @ v
    else:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    o.backward(d_o)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    print(f"{a.impl} peak_bytes {peak} inputs_bytes {base} extra_bytes {peak - base}")


if __name__ == "__main__":
    main()
