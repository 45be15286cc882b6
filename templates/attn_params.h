// Runtime parameters of a forward attention kernel: everything that varies per call without
// recompiling. Included by the host (runtime/engine.cpp) and embedded verbatim in every generated
// kernel, so both sides share one definition. Plain C types only (no host or CUDA headers).
//
// What must change with this struct: the engine's fill_params(), and kGeneratorVersion.
#pragma once

namespace jitattn_kernel {

struct AttnFwdParams {
  const void* q;  // [batch, seq, heads_q, head_dim], strides below (elements)
  const void* k;  // [batch, seq, heads_kv, head_dim]
  const void* v;  // [batch, seq, heads_kv, head_dim_v]
  void* o;        // [batch, seq, heads_q, head_dim_v]
  float* lse;     // lse[b * lse_batch_stride + h * lse_head_stride + row]
  const void* bias;           // [b, h, sq, sk] with broadcast dims at stride 0
  const float* alibi_slopes;  // [heads_q]
  const int* cu_seqlens_q;    // packed varlen: batch + 1 offsets
  const int* cu_seqlens_k;
  const int* seqused_q;  // padded varlen: per-batch lengths (null = full)
  const int* seqused_k;

  long long q_batch_stride, q_row_stride, q_head_stride;
  long long k_batch_stride, k_row_stride, k_head_stride;
  long long v_batch_stride, v_row_stride, v_head_stride;
  long long o_batch_stride, o_row_stride, o_head_stride;
  long long bias_batch_stride, bias_head_stride, bias_row_stride, bias_col_stride;
  long long lse_batch_stride, lse_head_stride;

  int seqlen_q;  // per batch (none / padded) or the maximum (packed)
  int seqlen_k;
  int heads_q;
  int group;  // heads_q / heads_kv
  int window_left;   // -1 = unbounded
  int window_right;  // -1 = unbounded
};

}  // namespace jitattn_kernel
