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

  // Dropout (kernels generated with kDropout): keep when the Philox word >= dropout_threshold
  // (templates/philox.h); kept probabilities are multiplied by dropout_scale = 1 / (1 - p).
  unsigned long long dropout_seed;
  unsigned long long dropout_offset;
  unsigned int dropout_threshold;
  float dropout_scale;
};

// Runtime parameters of the backward kernels (templates/attn_bwd_sm80.cuh). `fwd` is the forward
// problem (o and lse are read); the gradients and the fp32 workspace follow.
struct AttnBwdParams {
  AttnFwdParams fwd;
  const void* d_o;  // o's shape, strides below
  void* dq;         // q's shape
  void* dk;         // k's shape
  void* dv;         // v's shape
  void* dbias;      // bias's shape (null: no bias gradient)
  float* dq_accum;     // fp32 [rows_q][heads_q][head_dim]; row = b * seqlen_q + i or packed row
  float* delta;        // fp32 rowsum(dO * O), indexed like lse
  float* dbias_accum;  // fp32, dbias's shape contiguous
  // The Hopper backward's deterministic mode: one counter per (batch, query head, 64 query rows),
  // at ((b * heads_q + h) * dq_sem_stride + query block); zero at the start (null otherwise).
  int* dq_sem;
  long long dq_sem_stride;

  long long do_batch_stride, do_row_stride, do_head_stride;
  long long dq_batch_stride, dq_row_stride, dq_head_stride;
  long long dk_batch_stride, dk_row_stride, dk_head_stride;
  long long dv_batch_stride, dv_row_stride, dv_head_stride;
  // dbias_accum strides over (batch, head, row, col); 0 on broadcast dims.
  long long dba_batch_stride, dba_head_stride, dba_row_stride, dba_col_stride;
  // dbias's shape and strides (elements), for the conversion from dbias_accum.
  long long dbias_shape[4];
  long long dbias_stride[4];
  int rows_q;  // rows of q along its seq dim times batch (packed: total_q)
  int batch;   // sequences (the CPU dQ pass loops over a batch the bias gradient is broadcast over)
};

}  // namespace jitattn_kernel
