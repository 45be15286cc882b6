// Forward attention for the CPU, FlashAttention-2's schedule on host vectors.
//
// One work item computes kBlockM query rows of one (batch, head): Q^T is loaded once (fp32, scale
// folded in), then each key block of kBlockN keys goes through
//   S^T = K Q^T           (BLOCK_N, BLOCK_M): broadcast K[j][d] times the contiguous row Q^T[d]
//   score modifiers, masks
//   online softmax        vectors over the query rows, exp2 in the log2 domain
//   O = O * corr + P V    (BLOCK_M, HEAD_DIM_V): broadcast P[i][j] times the contiguous row V[j]
// Both products are register-blocked micro-kernels over compile-time trip counts, and keeping
// S transposed means neither K nor V is ever transposed: each K/V element is converted once
// per work item into a compact block, and the softmax reductions over keys are
// vertical (element-wise across rows), not horizontal.
//
// Expects, from the generator: JITATTN_KERNEL_NAME, AttnFwdParams, namespace cfg with the
// compile-time constants, elem_t with elem_to_float/float_to_elem, struct ScoreMod, and
// templates/philox.h (kDropout).

namespace jitattn_kernel {

using namespace cfg;

static_assert(kHeadDim % 8 == 0 && kHeadDimV % 8 == 0, "head dims must be multiples of 8");
static_assert(kBlockM >= 4 && (kBlockM & (kBlockM - 1)) == 0, "block_m must be a power of 2 >= 4");
static_assert(kBlockN >= 16 && (kBlockN & (kBlockN - 1)) == 0, "block_n must be a power of 2 >= 16");

// Query rows are the vector lanes of S^T: kQCols vectors of kW lanes per key row.
constexpr int kW = min_i(kBlockM, kVecWidth);
constexpr int kQCols = kBlockM / kW;
typedef fvec<kW> qvec;

// S^T micro-kernel: kQkRows keys x kQkCols query vectors of accumulators.
constexpr int kQkCols = min_i(kQCols, 4);
constexpr int kQkRows = min_i(pow2_floor(max_i(1, kAccRegs / kQkCols)), kBlockN);
// Keys per softmax step (4 independent max/sum chains); the S^T rows computed in a block are a
// multiple of it, so the tail of a sequence costs at most kRowStep - 1 wasted rows, not a block.
constexpr int kRowStep = max_i(kQkRows, 4);
static_assert(kBlockN % kRowStep == 0, "block_n must be a multiple of the key step");

// O micro-kernel: columns of O in vectors of kVecWidth (plus an 8-wide tail when the head dim is
// 8 mod 16 on AVX-512), chunks of up to 4 vectors, as many query rows as accumulators allow.
constexpr int kOVecs = kHeadDimV / kVecWidth;
constexpr int kOTail = kHeadDimV % kVecWidth;  // 0 or 8
constexpr int kOChunk = 4;
constexpr int pv_rows(int vecs) { return min_i(pow2_floor(max_i(1, kAccRegs / vecs)), kBlockM); }

// ---- S^T = K Q^T ---------------------------------------------------------------------------------
// Rows [j0, j0 + kQkRows) of S^T, query vectors [c0, c0 + kQkCols).
inline void qk_tile(const float* __restrict k, long long k_stride, const float* __restrict q_t,
                    float* __restrict s_t, int j0, int c0) {
  qvec acc[kQkRows][kQkCols];  // (QK_ROWS, QK_COLS * W)
#pragma unroll
  for (int r = 0; r < kQkRows; ++r) {
#pragma unroll
    for (int c = 0; c < kQkCols; ++c) acc[r][c] = 0.0f;
  }
  const float* k0 = k + j0 * k_stride;
  for (int d = 0; d < kHeadDim; ++d) {
    qvec q[kQkCols];
#pragma unroll
    for (int c = 0; c < kQkCols; ++c) q[c] = load_vec<kW>(q_t + d * kBlockM + (c0 + c) * kW);
#pragma unroll
    for (int r = 0; r < kQkRows; ++r) {
      const qvec kb = k0[r * k_stride + d];
#pragma unroll
      for (int c = 0; c < kQkCols; ++c) acc[r][c] += kb * q[c];
    }
  }
#pragma unroll
  for (int r = 0; r < kQkRows; ++r) {
#pragma unroll
    for (int c = 0; c < kQkCols; ++c) store_vec<kW>(s_t + (j0 + r) * kBlockM + (c0 + c) * kW, acc[r][c]);
  }
}

inline void qk_product(const float* k, long long k_stride, const float* q_t, float* s_t, int rows) {
  for (int j0 = 0; j0 < rows; j0 += kQkRows) {
    for (int c0 = 0; c0 < kQCols; c0 += kQkCols) qk_tile(k, k_stride, q_t, s_t, j0, c0);
  }
}

// ---- O = O * corr + P V --------------------------------------------------------------------------
// Rows [i0, i0 + RI) of O, columns [col0, col0 + CD * VW), keys [0, keys).
template <int RI, int CD, int VW>
inline void pv_tile(float* __restrict o, const float* __restrict p_t, const float* __restrict v,
                    long long v_stride, const float* __restrict corr, int i0, int col0, int keys) {
  typedef fvec<VW> ovec;
  ovec acc[RI][CD];  // (RI, CD * VW)
#pragma unroll
  for (int r = 0; r < RI; ++r) {
    const ovec cr = corr[i0 + r];
#pragma unroll
    for (int c = 0; c < CD; ++c) acc[r][c] = load_vec<VW>(o + (i0 + r) * kHeadDimV + col0 + c * VW) * cr;
  }
  for (int j = 0; j < keys; ++j) {
    const float* vr = v + j * v_stride + col0;
    ovec vb[CD];
#pragma unroll
    for (int c = 0; c < CD; ++c) vb[c] = load_vec<VW>(vr + c * VW);
    const float* pr = p_t + j * kBlockM + i0;
#pragma unroll
    for (int r = 0; r < RI; ++r) {
      const ovec pb = pr[r];
#pragma unroll
      for (int c = 0; c < CD; ++c) acc[r][c] += pb * vb[c];
    }
  }
#pragma unroll
  for (int r = 0; r < RI; ++r) {
#pragma unroll
    for (int c = 0; c < CD; ++c) store_vec<VW>(o + (i0 + r) * kHeadDimV + col0 + c * VW, acc[r][c]);
  }
}

template <int CD, int VW>
inline void pv_columns(float* o, const float* p_t, const float* v, long long v_stride,
                       const float* corr, int col0, int keys) {
  constexpr int kRows = pv_rows(CD);
  for (int i0 = 0; i0 < kBlockM; i0 += kRows) pv_tile<kRows, CD, VW>(o, p_t, v, v_stride, corr, i0, col0, keys);
}

inline void pv_product(float* o, const float* p_t, const float* v, long long v_stride,
                       const float* corr, int keys) {
  int col = 0;
  for (int n = 0; n < kOVecs / kOChunk; ++n, col += kOChunk * kVecWidth) {
    pv_columns<kOChunk, kVecWidth>(o, p_t, v, v_stride, corr, col, keys);
  }
  if constexpr (kOVecs % kOChunk != 0) {
    pv_columns<kOVecs % kOChunk, kVecWidth>(o, p_t, v, v_stride, corr, col, keys);
    col += (kOVecs % kOChunk) * kVecWidth;
  }
  if constexpr (kOTail != 0) pv_columns<1, kOTail>(o, p_t, v, v_stride, corr, col, keys);
}

// ---- online softmax over one block ---------------------------------------------------------------
// s_t rows [0, rows) hold log2-domain scores; they become P^T. row_max and row_sum carry the
// running maximum and sum per query row, corr receives the factor that rescales O.
inline void softmax_block(float* __restrict s_t, int rows, float* __restrict row_max,
                          float* __restrict row_sum, float* __restrict corr) {
  for (int c = 0; c < kQCols; ++c) {
    const qvec old_max = load_vec<kW>(row_max + c * kW);
    qvec mx[4] = {old_max, old_max, old_max, old_max};
    for (int j = 0; j < rows; j += 4) {
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        mx[u] = __builtin_elementwise_max(mx[u], load_vec<kW>(s_t + (j + u) * kBlockM + c * kW));
      }
    }
    const qvec new_max = __builtin_elementwise_max(__builtin_elementwise_max(mx[0], mx[1]),
                                                   __builtin_elementwise_max(mx[2], mx[3]));
    // A row with no visible key so far keeps max -inf; subtract 0 then, so exp2 sees -inf, not NaN.
    const qvec m_use = new_max == neg_inf() ? static_cast<qvec>(0.0f) : new_max;
    const qvec cr = exp2_vec<kW>(old_max - m_use);
    qvec sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int j = 0; j < rows; j += 4) {
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        float* sp = s_t + (j + u) * kBlockM + c * kW;
        const qvec pe = exp2_vec<kW>(load_vec<kW>(sp) - m_use);
        store_vec<kW>(sp, pe);
        sum[u] += pe;
      }
    }
    store_vec<kW>(row_max + c * kW, new_max);
    store_vec<kW>(row_sum + c * kW, load_vec<kW>(row_sum + c * kW) * cr + ((sum[0] + sum[1]) + (sum[2] + sum[3])));
    store_vec<kW>(corr + c * kW, cr);
  }
}

// Dropout on P^T rows [0, keys) of the real query rows [0, rows), after the row sums have taken
// the probabilities (the LSE is that of P before dropout, as on the GPU and in the reference).
// Keys come in aligned groups of 4 (n0 is a multiple of 16): one Philox draw per group and row.
inline void dropout_block(const AttnFwdParams& p, float* __restrict s_t, unsigned bh, int m0, int n0,
                          int rows, int keys) {
  for (int j0 = 0; j0 < keys; j0 += 4) {
    for (int i = 0; i < rows; ++i) {
      const Philox4 r = dropout_bits4(p.dropout_seed, p.dropout_offset, bh, static_cast<unsigned>(m0 + i),
                                      static_cast<unsigned>(n0 + j0));
      for (int u = 0; u < 4 && j0 + u < keys; ++u) {
        float& e = s_t[(j0 + u) * kBlockM + i];
        e = r.x[u] >= p.dropout_threshold ? e * p.dropout_scale : 0.0f;
      }
    }
  }
}

// Fully masked rows and padded rows past the batch's length: O = 0, LSE = -inf.
inline void write_empty_rows(elem_t* o, long long o_row_stride, float* lse, int r0, int r1) {
  for (int r = r0; r < r1; ++r) {
    elem_t* row = o + r * o_row_stride;
    for (int d = 0; d < kHeadDimV; ++d) row[d] = float_to_elem(0.0f);
    if (kLse) lse[r] = neg_inf();
  }
}

// One work item: rows [m_block * kBlockM, +kBlockM) of head h of batch b.
inline void attn_fwd_item(const AttnFwdParams& p, int b, int h, int m_block) {
  // ---- sequence extents of this batch -------------------------------------------------------
  int len_q = p.seqlen_q;
  int len_k = p.seqlen_k;
  long long row_q0 = 0, row_k0 = 0;  // first row of this batch along the seq dim
  if (kPacked) {
    row_q0 = p.cu_seqlens_q[b];
    row_k0 = p.cu_seqlens_k[b];
    len_q = p.cu_seqlens_q[b + 1] - static_cast<int>(row_q0);
    len_k = p.cu_seqlens_k[b + 1] - static_cast<int>(row_k0);
  }
  if (kPadded) {
    if (p.seqused_q) len_q = min_i(p.seqused_q[b], p.seqlen_q);
    if (p.seqused_k) len_k = min_i(p.seqused_k[b], p.seqlen_k);
  }
  const int m0 = m_block * kBlockM;
  // Rows this item writes: packed sequences end at len_q; padded batches also zero their rows
  // in [len_q, seqlen_q).
  const int rows_out = min_i(kBlockM, (kPadded ? p.seqlen_q : len_q) - m0);
  if (rows_out <= 0) return;
  const int rows = min_i(kBlockM, len_q - m0);  // real query rows (<= 0: only padding)

  const int kvh = h / p.group;
  const long long qb = kPacked ? 0 : static_cast<long long>(b);
  const elem_t* g_q = static_cast<const elem_t*>(p.q) + qb * p.q_batch_stride +
                      (row_q0 + m0) * p.q_row_stride + h * p.q_head_stride;
  const elem_t* g_k = static_cast<const elem_t*>(p.k) + qb * p.k_batch_stride +
                      row_k0 * p.k_row_stride + kvh * p.k_head_stride;
  const elem_t* g_v = static_cast<const elem_t*>(p.v) + qb * p.v_batch_stride +
                      row_k0 * p.v_row_stride + kvh * p.v_head_stride;
  elem_t* g_o = static_cast<elem_t*>(p.o) + qb * p.o_batch_stride + (row_q0 + m0) * p.o_row_stride +
                h * p.o_head_stride;
  float* g_lse = kLse ? p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + row_q0 + m0 : nullptr;

  // ---- key blocks this query block can see (masks skip empty blocks) --------------------------
  const int offset = kBottomRight ? len_k - len_q : 0;
  const int m_last = m0 + rows - 1;  // last real query row of the block
  int n_end = len_k;
  int n_begin = 0;
  if (kCausal) n_end = min_i(n_end, m_last + offset + 1);
  if (kWindow && p.window_right >= 0) n_end = min_i(n_end, m_last + offset + p.window_right + 1);
  if (kWindow && p.window_left >= 0) n_begin = max_i(0, m0 + offset - p.window_left);
  const int nb_begin = n_begin / kBlockN;
  const int nb_end = (max_i(n_end, 0) + kBlockN - 1) / kBlockN;
  if (rows <= 0 || nb_end <= nb_begin) {
    write_empty_rows(g_o, p.o_row_stride, g_lse, 0, rows_out);
    return;
  }

  ScoreMod mod;
  mod.init(p, b, h, len_q, len_k, offset);

  alignas(64) float q_t[kHeadDim * kBlockM];     // (HEAD_DIM, BLOCK_M) Q^T, scale folded in
  alignas(64) float k_buf[kBlockN * kHeadDim];   // (BLOCK_N, HEAD_DIM) K rows as f32
  alignas(64) float v_buf[kBlockN * kHeadDimV];  // (BLOCK_N, HEAD_DIM_V) V rows as f32
  alignas(64) float s_t[kBlockN * kBlockM];      // (BLOCK_N, BLOCK_M) S^T, then P^T
  alignas(64) float o_acc[kBlockM * kHeadDimV];  // (BLOCK_M, HEAD_DIM_V)
  alignas(64) float row_max[kBlockM];            // log2 domain
  alignas(64) float row_sum[kBlockM];
  alignas(64) float corr[kBlockM];

  for (int i = 0; i < kBlockM; ++i) {
    // Rows past the sequence are zeros: finite scores that are never written out.
    const elem_t* q_row = g_q + (i < rows ? i : 0) * p.q_row_stride;
    const float keep = i < rows ? kQScale : 0.0f;
    for (int d = 0; d < kHeadDim; ++d) q_t[d * kBlockM + i] = elem_to_float(q_row[d]) * keep;
  }
  for (int i = 0; i < kBlockM * kHeadDimV; ++i) o_acc[i] = 0.0f;
  for (int i = 0; i < kBlockM; ++i) {
    row_max[i] = neg_inf();
    row_sum[i] = 0.0f;
  }

  for (int nb = nb_begin; nb < nb_end; ++nb) {
    const int n0 = nb * kBlockN;
    const int keys = min_i(kBlockN, len_k - n0);                                // real keys
    const int s_rows = min_i(kBlockN, (keys + kRowStep - 1) / kRowStep * kRowStep);  // S^T rows computed

    // K and V rows as f32 in compact blocks, f32 inputs too: read in place, rows that are a
    // multiple of 4 KiB apart (heads * head_dim * 4 bytes) share L1 sets and the blocks re-read
    // by the micro-kernels thrash (d128, 8 heads: 124 -> 141 GFLOP/s by copying, bench/NOTES.md).
    for (int j = 0; j < keys; ++j) {
      const elem_t* k_src = g_k + (n0 + j) * p.k_row_stride;
      for (int d = 0; d < kHeadDim; ++d) k_buf[j * kHeadDim + d] = elem_to_float(k_src[d]);
      const elem_t* v_src = g_v + (n0 + j) * p.v_row_stride;
      for (int d = 0; d < kHeadDimV; ++d) v_buf[j * kHeadDimV + d] = elem_to_float(v_src[d]);
    }
    for (int j = keys; j < s_rows; ++j) {  // finite scores for the rows the mask removes
      for (int d = 0; d < kHeadDim; ++d) k_buf[j * kHeadDim + d] = 0.0f;
    }

    qk_product(k_buf, kHeadDim, q_t, s_t, s_rows);

    // ---- score modifiers and masks ------------------------------------------------------------
    if constexpr (!kRawScores) {
      // Indices are clamped into the sequence so that no modifier reads past it; the scores of
      // clamped positions are masked below (keys) or never written out (query rows).
      for (int j = 0; j < s_rows; ++j) {
        const int kj = min_i(n0 + j, len_k - 1);
        float* s_row = s_t + j * kBlockM;
        for (int i = 0; i < kBlockM; ++i) s_row[i] = mod.apply(s_row[i], min_i(m0 + i, len_q - 1), kj);
      }
    }
    // Only blocks that cross the sequence end or a mask boundary evaluate the mask per element.
    bool need_mask = n0 + s_rows > len_k;
    if (kCausal) need_mask |= n0 + s_rows - 1 > m0 + offset;
    if (kWindow && p.window_right >= 0) need_mask |= n0 + s_rows - 1 > m0 + offset + p.window_right;
    if (kWindow && p.window_left >= 0) need_mask |= n0 < m_last + offset - p.window_left;
    if (need_mask) {
      for (int j = 0; j < s_rows; ++j) {
        const int kj = n0 + j;
        float* s_row = s_t + j * kBlockM;
        for (int i = 0; i < kBlockM; ++i) {
          const int rel = kj - (m0 + i + offset);
          bool masked = kj >= len_k;
          if (kCausal) masked |= rel > 0;
          if (kWindow) {
            masked |= p.window_right >= 0 && rel > p.window_right;
            masked |= p.window_left >= 0 && rel < -p.window_left;
          }
          s_row[i] = masked ? neg_inf() : s_row[i];
        }
      }
    }

    softmax_block(s_t, s_rows, row_max, row_sum, corr);
    if constexpr (kDropout) dropout_block(p, s_t, static_cast<unsigned>(b * p.heads_q + h), m0, n0, rows, keys);
    pv_product(o_acc, s_t, v_buf, kHeadDimV, corr, keys);
  }

  // ---- epilogue: normalise, write O (and LSE) ------------------------------------------------
  for (int i = 0; i < rows; ++i) {
    const float sum = row_sum[i];
    if (!(sum > 0.0f)) {  // every key of the row masked
      write_empty_rows(g_o, p.o_row_stride, g_lse, i, i + 1);
      continue;
    }
    const float inv = 1.0f / sum;
    elem_t* o_row = g_o + i * p.o_row_stride;
    const float* acc = o_acc + i * kHeadDimV;
    for (int d = 0; d < kHeadDimV; ++d) o_row[d] = float_to_elem(acc[d] * inv);
    if (kLse) g_lse[i] = static_cast<float>(static_cast<double>(row_max[i]) * kLn2d + log_scalar(sum));
  }
  write_empty_rows(g_o, p.o_row_stride, g_lse, rows, rows_out);
}

}  // namespace jitattn_kernel

// Work items [begin, end): item = (b * heads_q + h) * m_blocks + m_block (runtime/device/cpu_jit.h).
extern "C" void JITATTN_KERNEL_NAME(const jitattn_kernel::AttnFwdParams* params, long long begin,
                                    long long end) {
  using namespace jitattn_kernel;
  const AttnFwdParams& p = *params;
  const long long m_blocks = (p.seqlen_q + kBlockM - 1) / kBlockM;
  if (m_blocks <= 0) return;
  for (long long item = begin; item < end; ++item) {
    const long long bh = item / m_blocks;
    int m_block = static_cast<int>(item % m_blocks);
    // Causal work grows with the query block: the heaviest items come first, so the pool's last
    // chunks hold the shortest ones.
    if (kCausal) m_block = static_cast<int>(m_blocks - 1) - m_block;
    attn_fwd_item(p, static_cast<int>(bh / p.heads_q), static_cast<int>(bh % p.heads_q), m_block);
  }
}
