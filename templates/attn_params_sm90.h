// Runtime parameters of a Hopper-family forward kernel (attn_fwd_sm90.cuh): the TMA tensor maps
// of Q, K, V (and a tileable bias) ahead of the ordinary AttnFwdParams, all in one
// __grid_constant__ kernel parameter so the maps stay in parameter space, where the TMA unit
// reads them. Included by the host
// (runtime/plan.cpp) and embedded after attn_params.h in every sm90 kernel. Plain C types only.
//
// What must change with these structs: the engine's make_tma_params() / make_bwd_tma_params(), and
// kGeneratorVersion.
#pragma once

namespace jitattn_kernel {

// A CUtensorMap: 128 opaque bytes, 64-byte aligned, encoded by cuTensorMapEncodeTiled.
struct alignas(64) TensorMapBytes {
  unsigned long long opaque[16];
};

struct AttnFwdTmaParams {
  TensorMapBytes tma_q;  // dims (head_dim, seqlen_q, heads_q, batch), box (panel cols, block_m)
  TensorMapBytes tma_k;  // dims (head_dim, seqlen_k, heads_kv, batch), box (panel cols, block_n)
  TensorMapBytes tma_v;  // dims (head_dim_v, seqlen_k, heads_kv, batch), box (panel cols, block_n)
  // Tileable bias only (else unset): dims (bias seqlen_k, seqlen_q, heads, batch), broadcast dims
  // of size 1 (coordinate 0), box (bias panel cols, block_m).
  TensorMapBytes tma_bias;
  AttnFwdParams p;
  // The tile grid (query blocks, heads, batch): the launch grid, or, persistent kernels
  // (kPersistent), what their CTAs claim, (head, batch) pairs in groups of tiles_group (K and V
  // of a group fit in L2; a causal grid of one tile per CTA walks its pairs in such groups too,
  // runtime/plan.h causal_pair_group). tile_counter: the persistent kernels' claim counter, 0 at
  // launch (the CTA taking the last ticket resets it; one counter per stream).
  unsigned tiles_m, tiles_h, tiles_b, tiles_group;
  unsigned* tile_counter;
};

// The Hopper-family backward's dK/dV kernel (attn_bwd_sm90.cuh): maps of Q and dO (boxes of
// block_m rows) and of K and V (block_n rows), then the backward params.
struct AttnBwdTmaParams {
  TensorMapBytes tma_q;   // dims (head_dim, seqlen_q, heads_q, batch), box (panel cols, block_m)
  TensorMapBytes tma_k;   // dims (head_dim, seqlen_k, heads_kv, batch), box (panel cols, block_n)
  TensorMapBytes tma_v;   // dims (head_dim_v, seqlen_k, heads_kv, batch), box (panel cols, block_n)
  TensorMapBytes tma_do;  // dims (head_dim_v, seqlen_q, heads_q, batch), box (panel cols, block_m)
  TensorMapBytes tma_dq;  // fp32 dQ workspace, dims (head_dim, seqlen_q, heads_q, batch), box (32, 64):
                          // the target of the kernel's reduce-adds
  AttnBwdParams p;
  // Causal: the launch order walks (KV head, batch) pairs in groups of pair_group, key block 0 of
  // each pair of a group, then key block 1, ... (the heaviest first; runtime/plan.h
  // causal_pair_group). 0 or 1: the grid's own order.
  unsigned pair_group;
};

}  // namespace jitattn_kernel
