// Backward attention for the CPU: FlashAttention-2's algorithm, deterministic by construction.
//
//   JITATTN_BWD_PRE   delta = rowsum(dO * O) per query row (fp32), items as the forward's.
//   JITATTN_BWD_MAIN  one item per (batch, KV head, block of kBlockN keys): K and V of the block
//                     stay converted while the item walks every query head of the GQA group and
//                     every query block that sees a key of it:
//                       S^T  = K Q^T, dP^T = V dO^T                      (BLOCK_N, BLOCK_M)
//                       P from the forward's LSE; dS = P (dP Z - delta)   (Z: dropout keep/scale)
//                       dV  += (P Z)^T dO, dK += dS^T Q                   (BLOCK_N, HEAD_DIM[_V])
//                     and writes its rows of dK and dV once: no other item touches them.
//   JITATTN_BWD_DQ    one item per (batch, head, block of kBlockM query rows) walks the key
//                     blocks, recomputes S^T, dP^T and dS, and sums dQ += dS K in its own
//                     accumulator. With kDbias it also sums dS into the fp32 dBias workspace:
//                     dims the bias is broadcast over (batch, head, rows) collapse to one item that
//                     loops over them, so every workspace element has one owner that adds into it
//                     in a fixed order, then converts its slice to dbias.
// No atomics and no order that depends on scheduling: the gradients are bitwise reproducible.
// All products go through one register-blocked micro-kernel (mm_tile) with compile-time trip
// counts: a scalar of A broadcast times a contiguous row of B, as the forward's.
//
// Expects, from the generator: the three entry names, AttnBwdParams, namespace cfg with the
// compile-time constants, elem_t with elem_to_float/float_to_elem, struct ScoreMod (apply: scaled
// score -> log2 units; grad_scale: d(score) / d(Q.K)), and templates/philox.h.

namespace jitattn_kernel {

using namespace cfg;

static_assert(kHeadDim % 8 == 0 && kHeadDimV % 8 == 0, "head dims must be multiples of 8");
static_assert(kBlockM >= 16 && (kBlockM & (kBlockM - 1)) == 0, "block_m must be a power of 2 >= 16");
static_assert(kBlockN >= 16 && (kBlockN & (kBlockN - 1)) == 0, "block_n must be a power of 2 >= 16");

// ---- C (M, N) (+)= A (M, K) B (K, N) -------------------------------------------------------------
// A[r][k] at a[r * ARS + k * AKS] (so A may be read transposed), B and C row-major with leading
// dims LDB and LDC. Rows [r0, r0 + RI), columns [c0, c0 + CD * VW).
template <int RI, int CD, int VW, int K, int LDC, int ARS, int AKS, int LDB, bool kAcc>
inline void mm_tile(float* __restrict c, const float* __restrict a, const float* __restrict b, int r0,
                    int c0) {
  typedef fvec<VW> vec;
  vec acc[RI][CD];  // (RI, CD * VW)
#pragma unroll
  for (int r = 0; r < RI; ++r) {
#pragma unroll
    for (int j = 0; j < CD; ++j) acc[r][j] = kAcc ? load_vec<VW>(c + (r0 + r) * LDC + c0 + j * VW) : static_cast<vec>(0.0f);
  }
  for (int k = 0; k < K; ++k) {
    vec bv[CD];
#pragma unroll
    for (int j = 0; j < CD; ++j) bv[j] = load_vec<VW>(b + k * LDB + c0 + j * VW);
#pragma unroll
    for (int r = 0; r < RI; ++r) {
      const vec av = a[(r0 + r) * ARS + k * AKS];
#pragma unroll
      for (int j = 0; j < CD; ++j) acc[r][j] += av * bv[j];
    }
  }
#pragma unroll
  for (int r = 0; r < RI; ++r) {
#pragma unroll
    for (int j = 0; j < CD; ++j) store_vec<VW>(c + (r0 + r) * LDC + c0 + j * VW, acc[r][j]);
  }
}

template <int M, int CD, int VW, int K, int LDC, int ARS, int AKS, int LDB, bool kAcc>
inline void mm_columns(float* c, const float* a, const float* b, int c0) {
  constexpr int kRows = min_i(pow2_floor(max_i(1, kAccRegs / CD)), M);
  static_assert(M % kRows == 0, "rows of a product must be a multiple of its row step");
  for (int r0 = 0; r0 < M; r0 += kRows) mm_tile<kRows, CD, VW, K, LDC, ARS, AKS, LDB, kAcc>(c, a, b, r0, c0);
}

// Columns in chunks of up to 4 host vectors, then an 8- and a 4-wide tail (N is a multiple of 4).
template <int M, int N, int K, int LDC, int ARS, int AKS, int LDB, bool kAcc>
inline void mm(float* c, const float* a, const float* b) {
  static_assert(N % 4 == 0, "product columns must be a multiple of 4");
  constexpr int kVecs = N / kVecWidth;
  constexpr int kRest = N % kVecWidth;
  int col = 0;
  for (int n = 0; n < kVecs / 4; ++n, col += 4 * kVecWidth) {
    mm_columns<M, 4, kVecWidth, K, LDC, ARS, AKS, LDB, kAcc>(c, a, b, col);
  }
  if constexpr (kVecs % 4 != 0) {
    mm_columns<M, kVecs % 4, kVecWidth, K, LDC, ARS, AKS, LDB, kAcc>(c, a, b, col);
    col += (kVecs % 4) * kVecWidth;
  }
  if constexpr (kRest >= 8) {
    mm_columns<M, 1, 8, K, LDC, ARS, AKS, LDB, kAcc>(c, a, b, col);
    col += 8;
  }
  if constexpr (kRest % 8 == 4) mm_columns<M, 1, 4, K, LDC, ARS, AKS, LDB, kAcc>(c, a, b, col);
}

// ---- shared pieces -------------------------------------------------------------------------------
// Where a batch's rows are and how long its sequences are (as the forward kernel).
struct Extents {
  int len_q, len_k;
  long long row_q0, row_k0;
};
inline Extents extents(const AttnFwdParams& p, int b) {
  Extents e{p.seqlen_q, p.seqlen_k, 0, 0};
  if (kPacked) {
    e.row_q0 = p.cu_seqlens_q[b];
    e.row_k0 = p.cu_seqlens_k[b];
    e.len_q = p.cu_seqlens_q[b + 1] - static_cast<int>(e.row_q0);
    e.len_k = p.cu_seqlens_k[b + 1] - static_cast<int>(e.row_k0);
  }
  if (kPadded) {
    if (p.seqused_q) e.len_q = min_i(p.seqused_q[b], p.seqlen_q);
    if (p.seqused_k) e.len_k = min_i(p.seqused_k[b], p.seqlen_k);
  }
  return e;
}

// Converts `rows` rows of `cols` elements into a compact f32 block (row-major, leading dim cols);
// rows [rows, total) are zeros.
template <int kCols>
inline void load_rows(float* __restrict dst, const elem_t* src, long long row_stride, int rows, int total) {
  for (int r = 0; r < total; ++r) {
    float* d = dst + r * kCols;
    if (r < rows) {
      const elem_t* s = src + r * row_stride;
      for (int c = 0; c < kCols; ++c) d[c] = elem_to_float(s[c]);
    } else {
      for (int c = 0; c < kCols; ++c) d[c] = 0.0f;
    }
  }
}

// The transpose of a compact (kBlockM, kCols) block: (kCols, kBlockM).
template <int kCols>
inline void transpose_rows(float* __restrict dst, const float* __restrict src) {
  for (int r = 0; r < kBlockM; ++r) {
    for (int c = 0; c < kCols; ++c) dst[c * kBlockM + r] = src[r * kCols + c];
  }
}

template <int kCols>
inline void store_rows(elem_t* dst, long long row_stride, const float* src, int rows, int rows_out) {
  for (int r = 0; r < rows_out; ++r) {
    elem_t* d = dst + r * row_stride;
    for (int c = 0; c < kCols; ++c) d[c] = float_to_elem(r < rows ? src[r * kCols + c] : 0.0f);
  }
}

// LSE (log2 units; +inf for rows with no allowed key and rows past the sequence, so their P is 0)
// and delta of the query rows [m0, m0 + kBlockM) of head h.
inline void load_row_stats(const AttnBwdParams& bp, int b, int h, long long row_q0, int m0, int rows,
                           float* __restrict lse_log2, float* __restrict delta) {
  const AttnFwdParams& p = bp.fwd;
  const long long at = b * p.lse_batch_stride + h * p.lse_head_stride + row_q0 + m0;
  for (int i = 0; i < kBlockM; ++i) {
    const float lse = i < rows ? p.lse[at + i] : neg_inf();
    lse_log2[i] = lse == neg_inf() ? -neg_inf() : lse * kLog2e;
    delta[i] = i < rows ? bp.delta[at + i] : 0.0f;
  }
}

// Where the dS of (b, h) goes in the fp32 dBias workspace (broadcast dims at stride 0).
struct BiasGrad {
  float* base;
  long long row_stride, col_stride;
};

// One (BLOCK_N keys, BLOCK_M queries) tile's share of the chain rule. In: s_t = raw Q.K, dp_t =
// dO.V (both S^T layout). Out: s_t = P Z (dropped probabilities, which multiply dO into dV),
// dp_t = dL/d(Q.K). With kCollect, dL/d(score) of every allowed position is added to `bg`.
inline bool is_masked(const AttnFwdParams& p, int qi, int kj, int len_q, int len_k, int offset) {
  const int rel = kj - (qi + offset);
  bool masked = qi >= len_q || kj >= len_k;
  if (kCausal) masked |= rel > 0;
  if (kWindow) {
    masked |= p.window_right >= 0 && rel > p.window_right;
    masked |= p.window_left >= 0 && rel < -p.window_left;
  }
  return masked;
}

template <bool kCollect>
inline void score_grads(const AttnFwdParams& p, const ScoreMod& mod, float* __restrict s_t,
                        float* __restrict dp_t, const float* __restrict lse_log2,
                        const float* __restrict delta, int m0, int n0, int len_q, int len_k,
                        int offset, unsigned bh, const BiasGrad& bg) {
  if constexpr (!kDropout) {
    // One key row at a time, query rows innermost: a branch-free loop over contiguous rows of
    // S^T and dP^T that the loop vectoriser takes (fp32 d64 seqlen 1024: 66.6 -> 59.7 ms against
    // the key-quad loop below, which the dropout path keeps for its one Philox draw per 4 keys).
    (void)bh;
    for (int j = 0; j < kBlockN; ++j) {
      const int kj = n0 + j;
      const int kj_clamped = min_i(kj, len_k - 1);
      float* __restrict s_row = s_t + j * kBlockM;
      float* __restrict dp_row = dp_t + j * kBlockM;
      for (int i = 0; i < kBlockM; ++i) {
        const int qi = m0 + i;
        const bool masked = is_masked(p, qi, kj, len_q, len_k, offset);
        const float raw = s_row[i];
        const float x = kRawScores ? raw * kScaleLog2 : mod.apply(raw * kScale, min_i(qi, len_q - 1), kj_clamped);
        const float pr = masked ? 0.0f : exp2_scalar(x - lse_log2[i]);
        const float ds = pr * (dp_row[i] - delta[i]);
        s_row[i] = pr;
        dp_row[i] = ds * mod.grad_scale(raw * kScale);
        if constexpr (kCollect) {
          if (!masked) bg.base[qi * bg.row_stride + kj * bg.col_stride] += ds;
        }
      }
    }
    return;
  }
  for (int j0 = 0; j0 < kBlockN; j0 += 4) {
    for (int i = 0; i < kBlockM; ++i) {
      const int qi = m0 + i;
      unsigned words[4] = {~0u, ~0u, ~0u, ~0u};
      if constexpr (kDropout) {
        const Philox4 r = dropout_bits4(p.dropout_seed, p.dropout_offset, bh, static_cast<unsigned>(qi),
                                        static_cast<unsigned>(n0 + j0));
        for (int u = 0; u < 4; ++u) words[u] = r.x[u];
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int j = j0 + u;
        const int kj = n0 + j;
        const bool masked = is_masked(p, qi, kj, len_q, len_k, offset);
        const int at = j * kBlockM + i;
        const float raw = s_t[at];
        // Indices clamped into the sequence so that no modifier reads past it (masked anyway).
        const float x = kRawScores ? raw * kScaleLog2
                                   : mod.apply(raw * kScale, min_i(qi, len_q - 1), min_i(kj, len_k - 1));
        const float pr = masked ? 0.0f : exp2_scalar(x - lse_log2[i]);
        float dp = dp_t[at];
        float pz = pr;
        if constexpr (kDropout) {
          const bool keep = words[u] >= p.dropout_threshold;
          dp = keep ? dp * p.dropout_scale : 0.0f;
          pz = keep ? pr * p.dropout_scale : 0.0f;
        }
        const float ds = pr * (dp - delta[i]);
        s_t[at] = pz;
        dp_t[at] = ds * mod.grad_scale(raw * kScale);
        if constexpr (kCollect) {
          if (!masked) bg.base[qi * bg.row_stride + kj * bg.col_stride] += ds;
        }
      }
    }
  }
}

}  // namespace jitattn_kernel

// ---- delta = rowsum(dO * O): items (b * heads_q + h) * m_blocks + m_block ---------------------
extern "C" void JITATTN_BWD_PRE(const jitattn_kernel::AttnBwdParams* params, long long begin, long long end) {
  using namespace jitattn_kernel;
  const AttnBwdParams& bp = *params;
  const AttnFwdParams& p = bp.fwd;
  const long long m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  for (long long item = begin; item < end; ++item) {
    const long long bh = item / m_blocks;
    const int b = static_cast<int>(bh / p.heads_q);
    const int h = static_cast<int>(bh % p.heads_q);
    const int m0 = static_cast<int>(item % m_blocks) * kBlockM;
    const Extents ex = extents(p, b);
    const int rows = min_i(kBlockM, ex.len_q - m0);
    const long long qb = kPacked ? 0 : static_cast<long long>(b);
    const long long at = b * p.lse_batch_stride + h * p.lse_head_stride + ex.row_q0 + m0;
    for (int i = 0; i < rows; ++i) {
      const long long row = ex.row_q0 + m0 + i;
      const elem_t* o = static_cast<const elem_t*>(p.o) + qb * p.o_batch_stride + row * p.o_row_stride +
                        h * p.o_head_stride;
      const elem_t* d_o = static_cast<const elem_t*>(bp.d_o) + qb * bp.do_batch_stride +
                          row * bp.do_row_stride + h * bp.do_head_stride;
      float sum = 0.0f;
      for (int c = 0; c < kHeadDimV; ++c) sum += elem_to_float(o[c]) * elem_to_float(d_o[c]);
      bp.delta[at + i] = sum;
    }
  }
}

// ---- dK, dV: items (b * heads_kv + kv_head) * n_blocks + n_block ------------------------------
namespace jitattn_kernel {

inline void attn_bwd_dkdv_item(const AttnBwdParams& bp, int b, int hk, int n_block) {
  const AttnFwdParams& p = bp.fwd;
  const Extents ex = extents(p, b);
  const int len_q = ex.len_q, len_k = ex.len_k;
  const int n0 = n_block * kBlockN;
  // Key rows this item writes: padded batches also zero their keys in [len_k, seqlen_k).
  const int rows_out = min_i(kBlockN, (kPadded ? p.seqlen_k : len_k) - n0);
  if (rows_out <= 0) return;
  const int keys = max_i(0, min_i(kBlockN, len_k - n0));

  const long long qb = kPacked ? 0 : static_cast<long long>(b);
  const elem_t* g_k = static_cast<const elem_t*>(p.k) + qb * p.k_batch_stride +
                      (ex.row_k0 + n0) * p.k_row_stride + hk * p.k_head_stride;
  const elem_t* g_v = static_cast<const elem_t*>(p.v) + qb * p.v_batch_stride +
                      (ex.row_k0 + n0) * p.v_row_stride + hk * p.v_head_stride;
  elem_t* g_dk = static_cast<elem_t*>(bp.dk) + qb * bp.dk_batch_stride +
                 (ex.row_k0 + n0) * bp.dk_row_stride + hk * bp.dk_head_stride;
  elem_t* g_dv = static_cast<elem_t*>(bp.dv) + qb * bp.dv_batch_stride +
                 (ex.row_k0 + n0) * bp.dv_row_stride + hk * bp.dv_head_stride;

  // Query rows that see any key of this block (masks skip the rest).
  const int offset = kBottomRight ? len_k - len_q : 0;
  const int n_last = min_i(n0 + kBlockN, len_k) - 1;
  int m_begin = 0;
  int m_end = len_q;
  if (kCausal) m_begin = max_i(m_begin, n0 - offset);
  if (kWindow && p.window_right >= 0) m_begin = max_i(m_begin, n0 - offset - p.window_right);
  if (kWindow && p.window_left >= 0) m_end = min_i(m_end, n_last - offset + p.window_left + 1);
  const int mb_begin = max_i(m_begin, 0) / kBlockM;
  const int mb_end = (keys > 0 && m_end > m_begin) ? (m_end + kBlockM - 1) / kBlockM : mb_begin;

  alignas(64) float k_buf[kBlockN * kHeadDim];    // (BLOCK_N, HEAD_DIM)
  alignas(64) float v_buf[kBlockN * kHeadDimV];   // (BLOCK_N, HEAD_DIM_V)
  alignas(64) float dk_acc[kBlockN * kHeadDim];   // (BLOCK_N, HEAD_DIM)
  alignas(64) float dv_acc[kBlockN * kHeadDimV];  // (BLOCK_N, HEAD_DIM_V)
  alignas(64) float q_buf[kBlockM * kHeadDim];    // (BLOCK_M, HEAD_DIM)
  alignas(64) float q_t[kHeadDim * kBlockM];      // (HEAD_DIM, BLOCK_M)
  alignas(64) float do_buf[kBlockM * kHeadDimV];  // (BLOCK_M, HEAD_DIM_V)
  alignas(64) float do_t[kHeadDimV * kBlockM];    // (HEAD_DIM_V, BLOCK_M)
  alignas(64) float s_t[kBlockN * kBlockM];       // (BLOCK_N, BLOCK_M) S^T, then P Z
  alignas(64) float dp_t[kBlockN * kBlockM];      // (BLOCK_N, BLOCK_M) dP^T, then dS^T
  alignas(64) float lse_log2[kBlockM];
  alignas(64) float delta[kBlockM];

  for (int i = 0; i < kBlockN * kHeadDim; ++i) dk_acc[i] = 0.0f;
  for (int i = 0; i < kBlockN * kHeadDimV; ++i) dv_acc[i] = 0.0f;
  if (mb_end > mb_begin) {
    load_rows<kHeadDim>(k_buf, g_k, p.k_row_stride, keys, kBlockN);
    load_rows<kHeadDimV>(v_buf, g_v, p.v_row_stride, keys, kBlockN);
  }
  const BiasGrad no_bias{nullptr, 0, 0};
  for (int g = 0; g < p.group && mb_end > mb_begin; ++g) {
    const int h = hk * p.group + g;
    ScoreMod mod;
    mod.init(p, b, h, len_q, len_k, offset);
    const unsigned bh = static_cast<unsigned>(b * p.heads_q + h);
    const elem_t* g_q = static_cast<const elem_t*>(p.q) + qb * p.q_batch_stride +
                        ex.row_q0 * p.q_row_stride + h * p.q_head_stride;
    const elem_t* g_do = static_cast<const elem_t*>(bp.d_o) + qb * bp.do_batch_stride +
                         ex.row_q0 * bp.do_row_stride + h * bp.do_head_stride;
    for (int mb = mb_begin; mb < mb_end; ++mb) {
      const int m0 = mb * kBlockM;
      const int rows = min_i(kBlockM, len_q - m0);
      load_rows<kHeadDim>(q_buf, g_q + m0 * p.q_row_stride, p.q_row_stride, rows, kBlockM);
      load_rows<kHeadDimV>(do_buf, g_do + m0 * bp.do_row_stride, bp.do_row_stride, rows, kBlockM);
      transpose_rows<kHeadDim>(q_t, q_buf);
      transpose_rows<kHeadDimV>(do_t, do_buf);
      load_row_stats(bp, b, h, ex.row_q0, m0, rows, lse_log2, delta);

      mm<kBlockN, kBlockM, kHeadDim, kBlockM, kHeadDim, 1, kBlockM, false>(s_t, k_buf, q_t);
      mm<kBlockN, kBlockM, kHeadDimV, kBlockM, kHeadDimV, 1, kBlockM, false>(dp_t, v_buf, do_t);
      score_grads<false>(p, mod, s_t, dp_t, lse_log2, delta, m0, n0, len_q, len_k, offset, bh, no_bias);
      mm<kBlockN, kHeadDimV, kBlockM, kHeadDimV, kBlockM, 1, kHeadDimV, true>(dv_acc, s_t, do_buf);
      mm<kBlockN, kHeadDim, kBlockM, kHeadDim, kBlockM, 1, kHeadDim, true>(dk_acc, dp_t, q_buf);
    }
  }
  store_rows<kHeadDim>(g_dk, bp.dk_row_stride, dk_acc, keys, rows_out);
  store_rows<kHeadDimV>(g_dv, bp.dv_row_stride, dv_acc, keys, rows_out);
}

// dQ of rows [m_block * kBlockM, +kBlockM) of head h of batch b; with kDbias, dS into the workspace.
inline void attn_bwd_dq_block(const AttnBwdParams& bp, int b, int h, int m_block) {
  const AttnFwdParams& p = bp.fwd;
  const Extents ex = extents(p, b);
  const int len_q = ex.len_q, len_k = ex.len_k;
  const int m0 = m_block * kBlockM;
  const int rows_out = min_i(kBlockM, (kPadded ? p.seqlen_q : len_q) - m0);
  if (rows_out <= 0) return;
  const int rows = min_i(kBlockM, len_q - m0);
  const int kvh = h / p.group;
  const long long qb = kPacked ? 0 : static_cast<long long>(b);
  const elem_t* g_k = static_cast<const elem_t*>(p.k) + qb * p.k_batch_stride +
                      ex.row_k0 * p.k_row_stride + kvh * p.k_head_stride;
  const elem_t* g_v = static_cast<const elem_t*>(p.v) + qb * p.v_batch_stride +
                      ex.row_k0 * p.v_row_stride + kvh * p.v_head_stride;
  elem_t* g_dq = static_cast<elem_t*>(bp.dq) + qb * bp.dq_batch_stride +
                 (ex.row_q0 + m0) * bp.dq_row_stride + h * bp.dq_head_stride;

  const int offset = kBottomRight ? len_k - len_q : 0;
  const int m_last = m0 + rows - 1;
  int n_end = len_k;
  int n_begin = 0;
  if (kCausal) n_end = min_i(n_end, m_last + offset + 1);
  if (kWindow && p.window_right >= 0) n_end = min_i(n_end, m_last + offset + p.window_right + 1);
  if (kWindow && p.window_left >= 0) n_begin = max_i(0, m0 + offset - p.window_left);
  const int nb_begin = n_begin / kBlockN;
  const int nb_end = rows > 0 ? (max_i(n_end, 0) + kBlockN - 1) / kBlockN : nb_begin;

  alignas(64) float q_t[kHeadDim * kBlockM];      // (HEAD_DIM, BLOCK_M)
  alignas(64) float do_t[kHeadDimV * kBlockM];    // (HEAD_DIM_V, BLOCK_M)
  alignas(64) float k_buf[kBlockN * kHeadDim];    // (BLOCK_N, HEAD_DIM)
  alignas(64) float v_buf[kBlockN * kHeadDimV];   // (BLOCK_N, HEAD_DIM_V)
  alignas(64) float s_t[kBlockN * kBlockM];       // (BLOCK_N, BLOCK_M)
  alignas(64) float dp_t[kBlockN * kBlockM];      // (BLOCK_N, BLOCK_M)
  alignas(64) float dq_acc[kBlockM * kHeadDim];   // (BLOCK_M, HEAD_DIM)
  alignas(64) float lse_log2[kBlockM];
  alignas(64) float delta[kBlockM];

  for (int i = 0; i < kBlockM * kHeadDim; ++i) dq_acc[i] = 0.0f;
  if (nb_end > nb_begin) {
    {  // the row-major blocks only live until they are transposed
      alignas(64) float rows_buf[kBlockM * (kHeadDim > kHeadDimV ? kHeadDim : kHeadDimV)];
      const elem_t* g_q = static_cast<const elem_t*>(p.q) + qb * p.q_batch_stride +
                          (ex.row_q0 + m0) * p.q_row_stride + h * p.q_head_stride;
      const elem_t* g_do = static_cast<const elem_t*>(bp.d_o) + qb * bp.do_batch_stride +
                           (ex.row_q0 + m0) * bp.do_row_stride + h * bp.do_head_stride;
      load_rows<kHeadDim>(rows_buf, g_q, p.q_row_stride, rows, kBlockM);
      transpose_rows<kHeadDim>(q_t, rows_buf);
      load_rows<kHeadDimV>(rows_buf, g_do, bp.do_row_stride, rows, kBlockM);
      transpose_rows<kHeadDimV>(do_t, rows_buf);
    }
    load_row_stats(bp, b, h, ex.row_q0, m0, rows, lse_log2, delta);
    ScoreMod mod;
    mod.init(p, b, h, len_q, len_k, offset);
    const unsigned bh = static_cast<unsigned>(b * p.heads_q + h);
    BiasGrad bg{nullptr, 0, 0};
    if (kDbias) {
      bg.base = bp.dbias_accum + b * bp.dba_batch_stride + h * bp.dba_head_stride;
      bg.row_stride = bp.dba_row_stride;
      bg.col_stride = bp.dba_col_stride;
    }
    for (int nb = nb_begin; nb < nb_end; ++nb) {
      const int n0 = nb * kBlockN;
      const int keys = min_i(kBlockN, len_k - n0);
      load_rows<kHeadDim>(k_buf, g_k + n0 * p.k_row_stride, p.k_row_stride, keys, kBlockN);
      load_rows<kHeadDimV>(v_buf, g_v + n0 * p.v_row_stride, p.v_row_stride, keys, kBlockN);
      mm<kBlockN, kBlockM, kHeadDim, kBlockM, kHeadDim, 1, kBlockM, false>(s_t, k_buf, q_t);
      mm<kBlockN, kBlockM, kHeadDimV, kBlockM, kHeadDimV, 1, kBlockM, false>(dp_t, v_buf, do_t);
      score_grads<kDbias>(p, mod, s_t, dp_t, lse_log2, delta, m0, n0, len_q, len_k, offset, bh, bg);
      // dQ += dS K: dS read from dS^T (row i, key j at j * BLOCK_M + i).
      mm<kBlockM, kHeadDim, kBlockN, kHeadDim, 1, kBlockM, kHeadDim, true>(dq_acc, dp_t, k_buf);
    }
  }
  store_rows<kHeadDim>(g_dq, bp.dq_row_stride, dq_acc, max_i(rows, 0), rows_out);
}

// The dims of the dQ pass's item space: (batch, heads, m_blocks), each collapsed to 1 when the
// bias gradient is broadcast over it (runtime/plan.cpp, cpu_backward_items, mirrors this).
struct DqItems {
  int batches, heads, m_blocks;
  bool all_b, all_h, all_m;
};
inline DqItems dq_items(const AttnBwdParams& bp) {
  const AttnFwdParams& p = bp.fwd;
  DqItems d;
  d.all_b = kDbias && bp.dba_batch_stride == 0;
  d.all_h = kDbias && bp.dba_head_stride == 0;
  d.all_m = kDbias && bp.dba_row_stride == 0;
  d.batches = d.all_b ? 1 : bp.batch;
  d.heads = d.all_h ? 1 : p.heads_q;
  d.m_blocks = d.all_m ? 1 : (p.seqlen_q + kBlockM - 1) / kBlockM;
  return d;
}

// The dbias workspace elements of item (b, h, m_block) of the dQ pass: zeroed first, converted to
// dbias last. Rows [m0, m0 + BLOCK_M) of the bias's rows, or its one row when broadcast.
template <bool kConvert>
inline void dbias_slice(const AttnBwdParams& bp, int b, int h, int m_block, bool all_m) {
  const long long* sh = bp.dbias_shape;
  const long long* st = bp.dbias_stride;
  const long long r0 = all_m ? 0 : static_cast<long long>(m_block) * kBlockM;
  const long long r1 = all_m ? sh[2] : (r0 + kBlockM < sh[2] ? r0 + kBlockM : sh[2]);
  float* acc = bp.dbias_accum + b * bp.dba_batch_stride + h * bp.dba_head_stride;
  elem_t* out = static_cast<elem_t*>(bp.dbias) + (sh[0] == 1 ? 0 : b) * st[0] + (sh[1] == 1 ? 0 : h) * st[1];
  for (long long r = r0; r < r1; ++r) {
    for (long long c = 0; c < sh[3]; ++c) {
      float* a = acc + r * bp.dba_row_stride + c * bp.dba_col_stride;
      if (kConvert) {
        out[r * st[2] + c * st[3]] = float_to_elem(*a);
      } else {
        *a = 0.0f;
      }
    }
  }
}

}  // namespace jitattn_kernel

// ---- dQ (and dBias): items over DqItems (b, h, m_block) --------------------------------------
extern "C" void JITATTN_BWD_DQ(const jitattn_kernel::AttnBwdParams* params, long long begin, long long end) {
  using namespace jitattn_kernel;
  const AttnBwdParams& bp = *params;
  const DqItems d = dq_items(bp);
  const long long m_blocks_all = (bp.fwd.seqlen_q + kBlockM - 1) / kBlockM;
  for (long long item = begin; item < end; ++item) {
    const int mi = static_cast<int>(item % d.m_blocks);
    const long long bh = item / d.m_blocks;
    const int hi = static_cast<int>(bh % d.heads);
    const int bi = static_cast<int>(bh / d.heads);
    if (kDbias) dbias_slice<false>(bp, bi, hi, mi, d.all_m);
    // One owner per dbias element, fixed order: batch, head, query block, key block, row, key.
    for (int b = d.all_b ? 0 : bi; b < (d.all_b ? bp.batch : bi + 1); ++b) {
      for (int h = d.all_h ? 0 : hi; h < (d.all_h ? bp.fwd.heads_q : hi + 1); ++h) {
        for (long long m = d.all_m ? 0 : mi; m < (d.all_m ? m_blocks_all : mi + 1); ++m) {
          attn_bwd_dq_block(bp, b, h, static_cast<int>(m));
        }
      }
    }
    if (kDbias) dbias_slice<true>(bp, bi, hi, mi, d.all_m);
  }
}

extern "C" void JITATTN_BWD_MAIN(const jitattn_kernel::AttnBwdParams* params, long long begin, long long end) {
  using namespace jitattn_kernel;
  const AttnBwdParams& bp = *params;
  const AttnFwdParams& p = bp.fwd;
  const long long n_blocks = (p.seqlen_k + kBlockN - 1) / kBlockN;
  const int heads_kv = p.heads_q / p.group;
  for (long long item = begin; item < end; ++item) {
    const long long bh = item / n_blocks;
    attn_bwd_dkdv_item(bp, static_cast<int>(bh / heads_kv), static_cast<int>(bh % heads_kv),
                       static_cast<int>(item % n_blocks));
  }
}
