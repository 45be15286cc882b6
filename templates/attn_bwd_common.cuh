// Backward attention: the pieces both GPU families share (templates/attn_bwd_sm80.cuh and
// templates/attn_bwd_sm90.cuh): masks, sequence extents, and the small kernels around the main one.
//
//   JITATTN_BWD_PRE      delta = rowsum(dO * O) per query row (fp32, O(N)).
//   JITATTN_BWD_CONVERT  (fast mode) dQ workspace -> dq in the element type.
//   JITATTN_BWD_DBIAS    (kDbias) dBias workspace -> dbias in the element type.
//
// Expects, from the generator: JITATTN_BF16, the kernel names, namespace cfg with kHeadDim,
// kHeadDimV, kCausal, kBottomRight, kWindow, kPacked, kPadded.

namespace jitattn_kernel {

using namespace cfg;

// Masks of the forward (attention.h): keys past the sequence, causal, window; and query rows
// past the sequence (their LSE is not a row's).
JITATTN_DEVICE bool is_masked(const AttnFwdParams& p, int qi, int kj, int len_q, int len_k,
                              int offset) {
  bool masked = qi >= len_q || kj >= len_k;
  const int rel = kj - (qi + offset);
  if (kCausal) masked |= rel > 0;
  if (kWindow) {
    masked |= p.window_right >= 0 && rel > p.window_right;
    masked |= p.window_left >= 0 && rel < -p.window_left;
  }
  return masked;
}

// Where a batch's rows are and how long its sequences are (as the forward kernel).
struct Extents {
  int len_q, len_k;
  long long row_q0, row_k0;
};
JITATTN_DEVICE Extents extents(const AttnFwdParams& p, int b) {
  Extents e{p.seqlen_q, p.seqlen_k, 0, 0};
  if (kPacked) {
    e.row_q0 = p.cu_seqlens_q[b];
    e.row_k0 = p.cu_seqlens_k[b];
    e.len_q = p.cu_seqlens_q[b + 1] - static_cast<int>(e.row_q0);
    e.len_k = p.cu_seqlens_k[b + 1] - static_cast<int>(e.row_k0);
  }
  if (kPadded) {
    if (p.seqused_q) e.len_q = min(p.seqused_q[b], p.seqlen_q);
    if (p.seqused_k) e.len_k = min(p.seqused_k[b], p.seqlen_k);
  }
  return e;
}

}  // namespace jitattn_kernel

// ---- delta = rowsum(dO * O): one warp per (row, head) ------------------------------------------
extern "C" __global__ void __launch_bounds__(128) JITATTN_BWD_PRE(const jitattn_kernel::AttnBwdParams bp) {
  using namespace jitattn_kernel;
  const AttnFwdParams& p = bp.fwd;
  const long long idx = static_cast<long long>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (idx >= static_cast<long long>(bp.rows_q) * p.heads_q) return;
  const int r = static_cast<int>(idx / p.heads_q);
  const int h = static_cast<int>(idx % p.heads_q);
  const int b = kPacked ? 0 : r / p.seqlen_q;
  const int i = kPacked ? r : r % p.seqlen_q;
  const elem_t* o = static_cast<const elem_t*>(p.o) + b * p.o_batch_stride + i * p.o_row_stride +
                    h * p.o_head_stride;
  const elem_t* d_o = static_cast<const elem_t*>(bp.d_o) + b * bp.do_batch_stride +
                      i * bp.do_row_stride + h * bp.do_head_stride;
  float sum = 0.0f;
  for (int c = 2 * lane; c < kHeadDimV; c += 64) {
    sum += elem_to_float(o[c]) * elem_to_float(d_o[c]) + elem_to_float(o[c + 1]) * elem_to_float(d_o[c + 1]);
  }
#pragma unroll
  for (int m = 16; m >= 1; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
  if (lane == 0) bp.delta[b * p.lse_batch_stride + h * p.lse_head_stride + i] = sum;
}


// ---- dQ workspace (fp32) -> dq: one warp per (row, head) --------------------------------------
extern "C" __global__ void __launch_bounds__(128) JITATTN_BWD_CONVERT(const jitattn_kernel::AttnBwdParams bp) {
  using namespace jitattn_kernel;
  const AttnFwdParams& p = bp.fwd;
  const long long idx = static_cast<long long>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (idx >= static_cast<long long>(bp.rows_q) * p.heads_q) return;
  const int r = static_cast<int>(idx / p.heads_q);
  const int h = static_cast<int>(idx % p.heads_q);
  const int b = kPacked ? 0 : r / p.seqlen_q;
  const int i = kPacked ? r : r % p.seqlen_q;
  const float* src = bp.dq_accum + idx * kHeadDim;
  elem_t* dst = static_cast<elem_t*>(bp.dq) + b * bp.dq_batch_stride + i * bp.dq_row_stride +
                h * bp.dq_head_stride;
  for (int c = 2 * lane; c < kHeadDim; c += 64) {
    *reinterpret_cast<u32*>(dst + c) = pack2(src[c], src[c + 1]);
  }
}

// ---- dBias workspace (fp32, contiguous) -> dbias ----------------------------------------------
extern "C" __global__ void __launch_bounds__(256) JITATTN_BWD_DBIAS(const jitattn_kernel::AttnBwdParams bp) {
  using namespace jitattn_kernel;
  const long long n = static_cast<long long>(blockIdx.x) * 256 + threadIdx.x;
  const long long* sh = bp.dbias_shape;
  if (n >= sh[0] * sh[1] * sh[2] * sh[3]) return;
  long long rest = n;
  const long long i3 = rest % sh[3];
  rest /= sh[3];
  const long long i2 = rest % sh[2];
  rest /= sh[2];
  const long long i1 = rest % sh[1];
  const long long i0 = rest / sh[1];
  const long long at = i0 * bp.dbias_stride[0] + i1 * bp.dbias_stride[1] + i2 * bp.dbias_stride[2] +
                       i3 * bp.dbias_stride[3];
  const u32 packed = pack2(bp.dbias_accum[n], 0.0f);
  static_cast<elem_t*>(bp.dbias)[at] = static_cast<elem_t>(packed & 0xffffu);
}
