// Backward attention, mma.sync family (sm_80+): FlashAttention-2's algorithm.
//
//   JITATTN_BWD_MAIN     one CTA per (key block, column slice, KV head, batch). Each warp owns 16
//                        keys and keeps their dK, dV in registers while the CTA walks the query
//                        blocks of every query head of the GQA group: S^T = K Q^T and
//                        dP^T = V dO^T on tensor cores, P recomputed from the forward's LSE,
//                        dV += P^T dO, dS = P (dP - delta), dK += dS^T Q. Without kDeterministic
//                        it also adds dQ += dS K into an fp32 workspace with atomics (dS goes
//                        through shared memory so that every warp works on whole query rows).
//   JITATTN_BWD_DQ       (kDeterministic) one CTA per (query block, column slice, head, batch)
//                        walks the key blocks and sums dQ in registers: no order-dependent
//                        atomics, so dQ is bitwise reproducible.
// The preprocess (delta), dQ conversion and dBias kernels, the masks and the sequence extents
// are in templates/attn_bwd_common.cuh, which the generator places before this file.
//
// Column slices (kSplit): a CTA accumulates only its slice of the dK / dV (and dQ) columns, so
// large head dims fit in registers; each slice recomputes S and dP in full. A slice may hold no
// tile of a small head dim (e.g. dv 8 with 4 slices): its guards skip that work.
//
// Expects, from the generator: JITATTN_BF16, the five kernel names, namespace cfg with the
// compile-time constants, struct ScoreMod (apply: raw Q.K score -> log2-domain score; grad_scale:
// d(score) / d(Q.K)), and templates/philox.h.

namespace jitattn_kernel {

using namespace cfg;

constexpr int kThreads = kWarps * 32;
__host__ __device__ constexpr int padded_stride(int dim) { return ((dim / 8) % 2 == 0) ? dim + 8 : dim; }
constexpr int kQStride = padded_stride(kHeadDim);    // Q and K rows
constexpr int kKStride = padded_stride(kHeadDim);
constexpr int kVStride = padded_stride(kHeadDimV);   // V and dO rows
constexpr int kDSStride = padded_stride(kBlockM);    // dS^T rows: one key, kBlockM queries
constexpr int kDT = kHeadDim / 8;                    // n8 tiles of dQ / dK
constexpr int kDTV = kHeadDimV / 8;                  // n8 tiles of dV
constexpr int kDTS = (kDT + kSplit - 1) / kSplit;    // ... per column slice
constexpr int kDTVS = (kDTV + kSplit - 1) / kSplit;

static_assert(kBlockN == kWarps * 16, "block_n must be 16 keys per warp");
static_assert(kBlockM % 16 == 0, "block_m must be a multiple of 16");
static_assert(kStages == 1 || kStages == 2, "stages must be 1 or 2");

JITATTN_DEVICE void red_add(float* p, float v) {
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(p), "f"(v) : "memory");
}

// Copies kRows x kCols elements (rows past `valid_rows` zero-filled) into shared memory.
template <int kRows, int kCols, int kStride>
JITATTN_DEVICE void load_tile(elem_t* smem, const elem_t* gmem, long long row_stride,
                              int valid_rows, int tid) {
  constexpr int kChunksPerRow = kCols / 8;
  constexpr int kChunks = kRows * kChunksPerRow;
  // Rows above 256 columns: a loop (a full unroll keeps every chunk's global offset live).
#pragma unroll(kCols > 256 ? 1 : (kChunks + kThreads - 1) / kThreads)
  for (int c0 = 0; c0 < kChunks; c0 += kThreads) {
    const int c = c0 + tid;
    if (kChunks % kThreads == 0 || c < kChunks) {
      const int r = c / kChunksPerRow;
      const int cc = c % kChunksPerRow;
      const bool valid = r < valid_rows;
      const elem_t* src = valid ? gmem + r * row_stride + cc * 8 : gmem;
      cp_async_16(smem + r * kStride + cc * 8, src, valid ? 16 : 0);
    }
  }
}

// acc (16, kN) += A (16, kDim) B (kN, kDim)^T: A's 16 rows at sA, B's kN rows at sB, both
// row-major in shared memory (ldmatrix; a k8 tail when kDim is 8 mod 16).
template <int kDim, int kAStride, int kBStride, int kN>
JITATTN_DEVICE void gemm_nt(float (&acc)[kN / 8][4], const elem_t* sA, const elem_t* sB, int lane) {
  constexpr int kNT = kN / 8;
  constexpr int kK16 = kDim / 16;
  static_assert(kNT % 2 == 0, "n must be a multiple of 16");
  // Above head dim 256, 8 steps at a time (a full unroll hoists every step's A fragment).
#pragma unroll(kDim > 256 ? 8 : kK16)
  for (int ks = 0; ks < kK16; ++ks) {
    u32 a[4];
    ldmatrix_x4(a, sA + (lane % 16) * kAStride + ks * 16 + (lane / 16) * 8);
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      u32 b[4];  // b0/b1 of n-tiles 2np and 2np+1
      ldmatrix_x4(b, sB + (np * 16 + (lane / 16) * 8 + (lane % 8)) * kBStride + ks * 16 +
                         ((lane / 8) % 2) * 8);
      mma_16816(acc[2 * np], a, b[0], b[1]);
      mma_16816(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
  if constexpr (kDim % 16 != 0) {
    u32 a[2];
    ldmatrix_x2(a, sA + (lane % 16) * kAStride + kK16 * 16);
#pragma unroll
    for (int nq = 0; nq < kNT / 4; ++nq) {
      u32 b[4];  // b0 of n-tiles 4nq .. 4nq+3
      ldmatrix_x4(b, sB + (nq * 32 + lane) * kBStride + kK16 * 16);
#pragma unroll
      for (int j = 0; j < 4; ++j) mma_1688(acc[4 * nq + j], a, b[j]);
    }
    if constexpr (kNT % 4 != 0) {
      u32 b[2];
      ldmatrix_x2(b, sB + ((kNT - 2) * 8 + (lane % 16)) * kBStride + kK16 * 16);
      mma_1688(acc[kNT - 2], a, b[0]);
      mma_1688(acc[kNT - 1], a, b[1]);
    }
  }
}

// acc (16, 8 * kTiles) += C (16, kK) B (kK, cols): C is another product's accumulator (packed
// to 16 bits as the A operand), B row-major in shared memory (ldmatrix.trans, two n8 tiles per
// load). Only the n8 tiles first_tile .. first_tile + kTiles - 1 below kTotal (this CTA's column
// slice; the last slice of a head dim that kSplit does not divide is shorter).
template <int kK, int kBStride, int kTiles, int kTotal>
JITATTN_DEVICE void gemm_rt(float (&acc)[kTiles][4], const float (&c)[kK / 8][4], const elem_t* sB,
                            int first_tile, int lane) {
  constexpr bool kFull = kTiles * kSplit == kTotal;  // every slice's tiles exist
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    u32 a[4];  // (16, 16) A fragment
    a[0] = pack2(c[2 * kk][0], c[2 * kk][1]);
    a[1] = pack2(c[2 * kk][2], c[2 * kk][3]);
    a[2] = pack2(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = pack2(c[2 * kk + 1][2], c[2 * kk + 1][3]);
    const elem_t* rows_x4 = sB + (kk * 16 + ((lane / 8) % 2) * 8 + (lane % 8)) * kBStride + (lane / 16) * 8;
    const elem_t* rows_x2 = sB + (kk * 16 + (lane % 16)) * kBStride;
#pragma unroll
    for (int dp = 0; dp < kTiles / 2; ++dp) {
      const int tile = first_tile + 2 * dp;
      if (kFull || tile + 1 < kTotal) {
        u32 b[4];  // b0/b1 of tiles `tile` and `tile + 1`
        ldmatrix_x4_trans(b, rows_x4 + tile * 8);
        mma_16816(acc[2 * dp], a, b[0], b[1]);
        mma_16816(acc[2 * dp + 1], a, b[2], b[3]);
      } else if (tile < kTotal) {
        u32 b[2];
        ldmatrix_x2_trans(b, rows_x2 + tile * 8);
        mma_16816(acc[2 * dp], a, b[0], b[1]);
      }
    }
    if constexpr (kTiles % 2 != 0) {
      const int tile = first_tile + kTiles - 1;
      if (kFull || tile < kTotal) {
        u32 b[2];
        ldmatrix_x2_trans(b, rows_x2 + tile * 8);
        mma_16816(acc[kTiles - 1], a, b[0], b[1]);
      }
    }
  }
}

// One score's share of the chain rule. In: the raw Q.K (s_acc) and dO.V (dp_acc) products.
// Out: s_acc = the dropped probability P*Z that multiplies dO into dV, dp_acc = dL/d(Q.K);
// returns dL/d(score) (the bias gradient).
JITATTN_DEVICE float score_grad(const ScoreMod& mod, float& s_acc, float& dp_acc, int qi, int kj,
                                bool masked, float lse_log2, float delta, bool keep,
                                float dropout_scale) {
  const float raw = s_acc;
  const float pr = masked ? 0.0f : fast_exp2(mod.apply(raw, qi, kj) - lse_log2);
  float dp = dp_acc;
  float pz = pr;
  if constexpr (kDropout) {
    dp = keep ? dp * dropout_scale : 0.0f;
    pz = keep ? pr * dropout_scale : 0.0f;
  }
  const float ds = pr * (dp - delta);
  s_acc = pz;
  dp_acc = ds * mod.grad_scale(raw);
  return ds;
}

}  // namespace jitattn_kernel

extern "C" __global__ void __launch_bounds__(jitattn_kernel::kThreads, 1)
    JITATTN_BWD_MAIN(const jitattn_kernel::AttnBwdParams bp) {
  using namespace jitattn_kernel;
  constexpr bool kDq = !kDeterministic;
  constexpr int kQElems = kBlockM * kQStride;   // (BLOCK_M, HEAD_DIM) + pad
  constexpr int kOElems = kBlockM * kVStride;   // (BLOCK_M, HEAD_DIM_V) + pad
  const AttnFwdParams& p = bp.fwd;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  elem_t* sK = reinterpret_cast<elem_t*>(smem_raw);     // (BLOCK_N, HEAD_DIM)
  elem_t* sV = sK + kBlockN * kKStride;                 // (BLOCK_N, HEAD_DIM_V)
  elem_t* sQ = sV + kBlockN * kVStride;                 // kStages x (BLOCK_M, HEAD_DIM)
  elem_t* sdO = sQ + kStages * kQElems;                 // kStages x (BLOCK_M, HEAD_DIM_V)
  elem_t* sdS = sdO + kStages * kOElems;                // (BLOCK_N, BLOCK_M): dS^T
  float* sLse = reinterpret_cast<float*>(sdS + (kDq ? kBlockN * kDSStride : 0));  // kStages x BLOCK_M
  float* sDelta = sLse + kStages * kBlockM;                                        // kStages x BLOCK_M

  const int n_block = blockIdx.x / kSplit;
  const int slice = blockIdx.x % kSplit;
  const int hk = blockIdx.y;
  const int b = blockIdx.z;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;

  const Extents ex = extents(p, b);
  const int len_q = ex.len_q, len_k = ex.len_k;
  const int n0 = n_block * kBlockN;
  // Key rows this CTA writes: padded batches also zero their keys in [len_k, seqlen_k).
  const int rows_out = min(kBlockN, (kPadded ? p.seqlen_k : len_k) - n0);
  if (rows_out <= 0) return;

  const long long qb = kPacked ? 0 : static_cast<long long>(b);
  const elem_t* gK = static_cast<const elem_t*>(p.k) + qb * p.k_batch_stride +
                     (ex.row_k0 + n0) * p.k_row_stride + hk * p.k_head_stride;
  const elem_t* gV = static_cast<const elem_t*>(p.v) + qb * p.v_batch_stride +
                     (ex.row_k0 + n0) * p.v_row_stride + hk * p.v_head_stride;

  // Query rows that see any key of this block (masks skip the rest).
  const int offset = kBottomRight ? len_k - len_q : 0;
  const int n_last = min(n0 + kBlockN, len_k) - 1;
  int m_begin = 0;
  int m_end = len_q;
  if (kCausal) m_begin = max(m_begin, n0 - offset);
  if (kWindow && p.window_right >= 0) m_begin = max(m_begin, n0 - offset - p.window_right);
  if (kWindow && p.window_left >= 0) m_end = min(m_end, n_last - offset + p.window_left + 1);
  const int mb_begin = m_begin / kBlockM;
  const int mb_count = (n0 < len_k && m_end > m_begin) ? (m_end + kBlockM - 1) / kBlockM - mb_begin : 0;
  const int iterations = mb_count * p.group;

  float acc_dk[kDTS][4];   // (16 keys, this slice of HEAD_DIM) per warp
  float acc_dv[kDTVS][4];  // (16 keys, this slice of HEAD_DIM_V) per warp
#pragma unroll
  for (int d = 0; d < kDTS; ++d) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dk[d][e] = 0.0f;
  }
#pragma unroll
  for (int d = 0; d < kDTVS; ++d) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dv[d][e] = 0.0f;
  }

  // Query block `it` of the loop: head, first row, and its tiles into slot `slot`.
  auto head_of = [&](int it) { return hk * p.group + it / mb_count; };
  auto m0_of = [&](int it) { return (mb_begin + it % mb_count) * kBlockM; };
  auto load_query_block = [&](int it, int slot) {
    const int h = head_of(it);
    const int m0 = m0_of(it);
    const elem_t* gQ = static_cast<const elem_t*>(p.q) + qb * p.q_batch_stride +
                       (ex.row_q0 + m0) * p.q_row_stride + h * p.q_head_stride;
    const elem_t* gdO = static_cast<const elem_t*>(bp.d_o) + qb * bp.do_batch_stride +
                        (ex.row_q0 + m0) * bp.do_row_stride + h * bp.do_head_stride;
    load_tile<kBlockM, kHeadDim, kQStride>(sQ + slot * kQElems, gQ, p.q_row_stride, len_q - m0, tid);
    load_tile<kBlockM, kHeadDimV, kVStride>(sdO + slot * kOElems, gdO, bp.do_row_stride, len_q - m0, tid);
    const long long row0 = b * p.lse_batch_stride + h * p.lse_head_stride + ex.row_q0 + m0;
    for (int r = tid; r < kBlockM; r += kThreads) {
      const bool real = m0 + r < len_q;
      const float lse = real ? p.lse[row0 + r] : neg_inf();
      // A row with no allowed key has LSE -inf: +inf makes its P 0 instead of NaN.
      sLse[slot * kBlockM + r] = lse == neg_inf() ? -neg_inf() : lse * kLog2e;
      sDelta[slot * kBlockM + r] = real ? bp.delta[row0 + r] : 0.0f;
    }
  };

  if (iterations > 0) {
    load_tile<kBlockN, kHeadDim, kKStride>(sK, gK, p.k_row_stride, len_k - n0, tid);
    load_tile<kBlockN, kHeadDimV, kVStride>(sV, gV, p.v_row_stride, len_k - n0, tid);
    if constexpr (kStages == 2) load_query_block(0, 0);
    cp_async_commit();
  }

  const int key_w = n0 + warp * 16;  // first key of this warp
  for (int it = 0; it < iterations; ++it) {
    const int slot = kStages == 2 ? it % 2 : 0;
    if constexpr (kStages == 2) {
      cp_async_wait<0>();
      __syncthreads();  // block `it` landed; every warp is done with block it-1 (its slot, sdS)
      if (it + 1 < iterations) load_query_block(it + 1, (it + 1) % 2);
      cp_async_commit();
    } else {
      __syncthreads();  // every warp is done with block it-1
      load_query_block(it, 0);
      cp_async_commit();
      cp_async_wait<0>();
      __syncthreads();
    }
    const int h = head_of(it);
    const int m0 = m0_of(it);
    const elem_t* tQ = sQ + slot * kQElems;
    const elem_t* tdO = sdO + slot * kOElems;
    const float* tLse = sLse + slot * kBlockM;
    const float* tDelta = sDelta + slot * kBlockM;

    // ---- S^T = K Q^T and dP^T = V dO^T: (16 keys, BLOCK_M queries) per warp ------------------
    float acc_s[kBlockM / 8][4];
    float acc_dp[kBlockM / 8][4];
#pragma unroll
    for (int nt = 0; nt < kBlockM / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_s[nt][e] = acc_dp[nt][e] = 0.0f;
    }
    gemm_nt<kHeadDim, kKStride, kQStride, kBlockM>(acc_s, sK + warp * 16 * kKStride, tQ, lane);
    gemm_nt<kHeadDimV, kVStride, kVStride, kBlockM>(acc_dp, sV + warp * 16 * kVStride, tdO, lane);

    // ---- P, dS through the score modifiers, masks and dropout ----------------------------------
    ScoreMod mod;
    mod.init(p, b, h, len_q, len_k, offset, m0);
    const unsigned bh = static_cast<unsigned>(b * p.heads_q + h);
#pragma unroll
    for (int nt = 0; nt < kBlockM / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int kj = key_w + g + (e / 2) * 8;
        const int r = nt * 8 + 2 * t + (e % 2);  // query row within the block
        const int qi = m0 + r;
        const bool masked = is_masked(p, qi, kj, len_q, len_k, offset);
        bool keep = true;
        if constexpr (kDropout) {
          keep = dropout_keep(p.dropout_seed, p.dropout_offset, bh, static_cast<unsigned>(qi),
                              static_cast<unsigned>(kj), p.dropout_threshold);
        }
        const float ds = score_grad(mod, acc_s[nt][e], acc_dp[nt][e], qi, kj, masked, tLse[r],
                                    tDelta[r], keep, p.dropout_scale);
        if constexpr (kDbias) {
          if (!masked && slice == 0) {
            red_add(bp.dbias_accum + b * bp.dba_batch_stride + h * bp.dba_head_stride +
                        qi * bp.dba_row_stride + kj * bp.dba_col_stride,
                    ds);
          }
        }
      }
    }

    // ---- dV += (P Z)^T dO, dK += dS^T Q ---------------------------------------------------------
    gemm_rt<kBlockM, kVStride, kDTVS, kDTV>(acc_dv, acc_s, tdO, slice * kDTVS, lane);
    gemm_rt<kBlockM, kQStride, kDTS, kDT>(acc_dk, acc_dp, tQ, slice * kDTS, lane);

    if constexpr (kDq) {
      // ---- dQ += dS K: dS^T through shared memory, each warp takes (16 rows, 8 cols) units ----
#pragma unroll
      for (int nt = 0; nt < kBlockM / 8; ++nt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          *reinterpret_cast<u32*>(sdS + (warp * 16 + g + hf * 8) * kDSStride + nt * 8 + 2 * t) =
              pack2(acc_dp[nt][2 * hf], acc_dp[nt][2 * hf + 1]);
        }
      }
      __syncthreads();
      // Warps split the (BLOCK_M / 16) m16 tiles, and the slice's n8 tiles when there are more
      // warps than m16 tiles; a warp loads its dS A fragments once per m16 tile.
      constexpr int kMTiles = kBlockM / 16;
      constexpr int kMPerWarp = kMTiles >= kWarps ? kMTiles / kWarps : 1;
      constexpr int kWarpsPerM = kMTiles >= kWarps ? 1 : kWarps / kMTiles;
      constexpr int kTilesPerWarp = (kDTS + kWarpsPerM - 1) / kWarpsPerM;
#pragma unroll
      for (int i = 0; i < kMPerWarp; ++i) {
        const int mt = kMTiles >= kWarps ? warp + i * kWarps : warp % kMTiles;
        const int part = kMTiles >= kWarps ? 0 : warp / kMTiles;
        u32 a[kBlockN / 16][4];  // (16 rows, BLOCK_N keys) of dS
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          ldmatrix_x4_trans(a[kk], sdS + (kk * 16 + (lane % 8) + (lane / 16) * 8) * kDSStride +
                                       mt * 16 + ((lane / 8) % 2) * 8);
        }
#pragma unroll
        for (int j = 0; j < kTilesPerWarp; ++j) {
          const int local = part + j * kWarpsPerM;
          const int dt = slice * kDTS + local;
          if (local < kDTS && dt < kDT) {
            float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int kk = 0; kk < kBlockN / 16; ++kk) {
              u32 bk[2];
              ldmatrix_x2_trans(bk, sK + (kk * 16 + (lane % 16)) * kKStride + dt * 8);
              mma_16816(acc, a[kk], bk[0], bk[1]);
            }
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const int qi = m0 + mt * 16 + g + hf * 8;
              if (qi < len_q) {
                const long long row = kPacked ? ex.row_q0 + qi : static_cast<long long>(b) * p.seqlen_q + qi;
                float* dst = bp.dq_accum + (row * p.heads_q + h) * kHeadDim + dt * 8 + 2 * t;
                red_add(dst, acc[2 * hf]);
                red_add(dst + 1, acc[2 * hf + 1]);
              }
            }
          }
        }
      }
    }
  }

  // ---- epilogue: dK (already scaled through grad_scale) and dV ----------------------------------
  elem_t* gdK = static_cast<elem_t*>(bp.dk) + qb * bp.dk_batch_stride +
                (ex.row_k0 + n0) * bp.dk_row_stride + hk * bp.dk_head_stride;
  elem_t* gdV = static_cast<elem_t*>(bp.dv) + qb * bp.dv_batch_stride +
                (ex.row_k0 + n0) * bp.dv_row_stride + hk * bp.dv_head_stride;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = warp * 16 + g + hf * 8;
    if (r < rows_out) {
#pragma unroll
      for (int d = 0; d < kDTS; ++d) {
        const int dt = slice * kDTS + d;
        if (kDTS * kSplit == kDT || dt < kDT) {
          *reinterpret_cast<u32*>(gdK + r * bp.dk_row_stride + dt * 8 + 2 * t) =
              pack2(acc_dk[d][2 * hf], acc_dk[d][2 * hf + 1]);
        }
      }
#pragma unroll
      for (int d = 0; d < kDTVS; ++d) {
        const int dt = slice * kDTVS + d;
        if (kDTVS * kSplit == kDTV || dt < kDTV) {
          *reinterpret_cast<u32*>(gdV + r * bp.dv_row_stride + dt * 8 + 2 * t) =
              pack2(acc_dv[d][2 * hf], acc_dv[d][2 * hf + 1]);
        }
      }
    }
  }
}

// ---- deterministic dQ: one CTA per (query block, column slice, head, batch) --------------------
// Rows per CTA: 16 per warp (kBlockN); keys per step: kBlockM; K/V tiles in a kStages ring.
#if JITATTN_BWD_HAS_DQ
extern "C" __global__ void __launch_bounds__(jitattn_kernel::kThreads, 1)
    JITATTN_BWD_DQ(const jitattn_kernel::AttnBwdParams bp) {
  using namespace jitattn_kernel;
  constexpr int kRows = kBlockN;
  constexpr int kKeys = kBlockM;
  constexpr int kKElems = kKeys * kKStride;  // (KEYS, HEAD_DIM) + pad
  constexpr int kVElems = kKeys * kVStride;  // (KEYS, HEAD_DIM_V) + pad
  const AttnFwdParams& p = bp.fwd;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  elem_t* sQ = reinterpret_cast<elem_t*>(smem_raw);  // (ROWS, HEAD_DIM)
  elem_t* sdO = sQ + kRows * kQStride;               // (ROWS, HEAD_DIM_V)
  elem_t* sK = sdO + kRows * kVStride;               // kStages x (KEYS, HEAD_DIM)
  elem_t* sV = sK + kStages * kKElems;               // kStages x (KEYS, HEAD_DIM_V)

  const int m_block = blockIdx.x / kSplit;
  const int slice = blockIdx.x % kSplit;
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;
  const int t = lane % 4;

  const Extents ex = extents(p, b);
  const int len_q = ex.len_q, len_k = ex.len_k;
  const int m0 = m_block * kRows;
  const int rows_out = min(kRows, (kPadded ? p.seqlen_q : len_q) - m0);
  if (rows_out <= 0) return;
  const int kvh = h / p.group;
  const long long qb = kPacked ? 0 : static_cast<long long>(b);
  const elem_t* gK = static_cast<const elem_t*>(p.k) + qb * p.k_batch_stride +
                     ex.row_k0 * p.k_row_stride + kvh * p.k_head_stride;
  const elem_t* gV = static_cast<const elem_t*>(p.v) + qb * p.v_batch_stride +
                     ex.row_k0 * p.v_row_stride + kvh * p.v_head_stride;

  const int offset = kBottomRight ? len_k - len_q : 0;
  const int m_last = min(m0 + kRows, len_q) - 1;
  int n_end = len_k;
  int n_begin = 0;
  if (kCausal) n_end = min(n_end, m_last + offset + 1);
  if (kWindow && p.window_right >= 0) n_end = min(n_end, m_last + offset + p.window_right + 1);
  if (kWindow && p.window_left >= 0) n_begin = max(0, m0 + offset - p.window_left);
  const int nb_begin = n_begin / kKeys;
  const int nb_end = m0 < len_q ? (max(n_end, 0) + kKeys - 1) / kKeys : nb_begin;

  float acc_dq[kDTS][4];  // (16 rows, this slice of HEAD_DIM) per warp
#pragma unroll
  for (int d = 0; d < kDTS; ++d) {
#pragma unroll
    for (int e = 0; e < 4; ++e) acc_dq[d][e] = 0.0f;
  }

  if (nb_end > nb_begin) {
    const elem_t* gQ = static_cast<const elem_t*>(p.q) + qb * p.q_batch_stride +
                       (ex.row_q0 + m0) * p.q_row_stride + h * p.q_head_stride;
    const elem_t* gdO = static_cast<const elem_t*>(bp.d_o) + qb * bp.do_batch_stride +
                        (ex.row_q0 + m0) * bp.do_row_stride + h * bp.do_head_stride;
    load_tile<kRows, kHeadDim, kQStride>(sQ, gQ, p.q_row_stride, len_q - m0, tid);
    load_tile<kRows, kHeadDimV, kVStride>(sdO, gdO, bp.do_row_stride, len_q - m0, tid);
    auto load_keys = [&](int nb, int slot) {
      const int n0 = nb * kKeys;
      load_tile<kKeys, kHeadDim, kKStride>(sK + slot * kKElems, gK + n0 * p.k_row_stride,
                                           p.k_row_stride, len_k - n0, tid);
      load_tile<kKeys, kHeadDimV, kVStride>(sV + slot * kVElems, gV + n0 * p.v_row_stride,
                                            p.v_row_stride, len_k - n0, tid);
    };
    if constexpr (kStages == 2) load_keys(nb_begin, 0);
    cp_async_commit();

    // LSE (log2 domain, +inf for rows with no key) and delta of this thread's two rows.
    float lse_log2[2], delta[2];
    const long long row0 = b * p.lse_batch_stride + h * p.lse_head_stride + ex.row_q0;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int qi = m0 + warp * 16 + g + hf * 8;
      const float lse = qi < len_q ? p.lse[row0 + qi] : neg_inf();
      lse_log2[hf] = lse == neg_inf() ? -neg_inf() : lse * kLog2e;
      delta[hf] = qi < len_q ? bp.delta[row0 + qi] : 0.0f;
    }
    ScoreMod mod;
    mod.init(p, b, h, len_q, len_k, offset, m0);
    const unsigned bh = static_cast<unsigned>(b * p.heads_q + h);

    for (int nb = nb_begin; nb < nb_end; ++nb) {
      const int it = nb - nb_begin;
      const int slot = kStages == 2 ? it % 2 : 0;
      if constexpr (kStages == 2) {
        cp_async_wait<0>();
        __syncthreads();
        if (nb + 1 < nb_end) load_keys(nb + 1, (it + 1) % 2);
        cp_async_commit();
      } else {
        __syncthreads();
        load_keys(nb, 0);
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();
      }
      const elem_t* tK = sK + slot * kKElems;
      const elem_t* tV = sV + slot * kVElems;
      const int n0 = nb * kKeys;

      float acc_s[kKeys / 8][4];   // (16 rows, KEYS) per warp
      float acc_dp[kKeys / 8][4];
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[nt][e] = acc_dp[nt][e] = 0.0f;
      }
      gemm_nt<kHeadDim, kQStride, kKStride, kKeys>(acc_s, sQ + warp * 16 * kQStride, tK, lane);
      gemm_nt<kHeadDimV, kVStride, kVStride, kKeys>(acc_dp, sdO + warp * 16 * kVStride, tV, lane);
#pragma unroll
      for (int nt = 0; nt < kKeys / 8; ++nt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int qi = m0 + warp * 16 + g + hf * 8;
          const int kj0 = n0 + nt * 8 + 2 * t;
          Philox4 bits = {};
          if constexpr (kDropout) {
            bits = dropout_bits4(p.dropout_seed, p.dropout_offset, bh, static_cast<unsigned>(qi),
                                 static_cast<unsigned>(kj0));
          }
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const int kj = kj0 + c;
            const bool keep = kDropout ? philox_word(bits, kj & 3) >= p.dropout_threshold : true;
            score_grad(mod, acc_s[nt][2 * hf + c], acc_dp[nt][2 * hf + c], qi, kj,
                       is_masked(p, qi, kj, len_q, len_k, offset), lse_log2[hf], delta[hf], keep,
                       p.dropout_scale);
          }
        }
      }
      gemm_rt<kKeys, kKStride, kDTS, kDT>(acc_dq, acc_dp, tK, slice * kDTS, lane);
    }
    cp_async_wait<0>();
  }

  elem_t* gdQ = static_cast<elem_t*>(bp.dq) + qb * bp.dq_batch_stride +
                (ex.row_q0 + m0) * bp.dq_row_stride + h * bp.dq_head_stride;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int r = warp * 16 + g + hf * 8;
    if (r < rows_out) {
#pragma unroll
      for (int d = 0; d < kDTS; ++d) {
        const int dt = slice * kDTS + d;
        if (kDTS * kSplit == kDT || dt < kDT) {
          *reinterpret_cast<u32*>(gdQ + r * bp.dq_row_stride + dt * 8 + 2 * t) =
              pack2(acc_dq[d][2 * hf], acc_dq[d][2 * hf + 1]);
        }
      }
    }
  }
}
#endif
