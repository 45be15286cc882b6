// Forward attention, mma.sync family (sm_80+): FlashAttention-2 style.
//
// One CTA computes kBlockM query rows of one (batch, head). Each warp owns kRowsPerWarp rows
// (kMT m16 tiles) and walks the key blocks: S = Q K^T on tensor cores (ldmatrix from shared
// memory), score modifiers and masks, online softmax in fp32 in the exp2 domain, then O += P V
// with P reused from the S accumulators as the A operand (no trip through shared memory).
// K/V tiles stream through a kStages-deep cp.async ring.
//
// Column slices (kSplit > 1, head dims above 256): kSplit CTAs share a query block, each
// computing S and the softmax in full and O for its slice of kDT n8 tiles of the V/O columns
// (the last slice may be shorter), so O's accumulator fits in registers.
//
// Expects, from the generator: JITATTN_BF16, JITATTN_KERNEL_NAME, namespace cfg with the
// compile-time constants, and struct ScoreMod (the composed score modifiers).

namespace jitattn_kernel {

using namespace cfg;

constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = kBlockM / kWarps;
constexpr int kMT = kRowsPerWarp / 16;  // m16 tiles per warp
constexpr int kNT = kBlockN / 8;        // n8 tiles of S per warp
constexpr int kDTAll = kHeadDimV / 8;                  // n8 tiles of O, all slices
constexpr int kDT = (kDTAll + kSplit - 1) / kSplit;    // n8 tiles of O per warp (this slice)
constexpr int kVCols = kDT * 8;                        // V/O columns of a slice
constexpr int kK16 = kHeadDim / 16;     // k16 steps of S = Q K^T
constexpr bool kKTail = (kHeadDim % 16) != 0;  // one extra k8 step
constexpr int kQSteps = kK16 + (kKTail ? 1 : 0);

// Shared-memory rows are padded to an odd number of 16-byte chunks, so the 8 row addresses of
// an ldmatrix (and of cp.async stores) fall in 8 different bank groups: conflict-free for every
// head dim, including those (72, 80, ...) where an XOR swizzle over 8 chunks does not fit.
__host__ __device__ constexpr int padded_stride(int dim) { return ((dim / 8) % 2 == 0) ? dim + 8 : dim; }
constexpr int kQStride = padded_stride(kHeadDim);
constexpr int kKStride = padded_stride(kHeadDim);
constexpr int kVStride = padded_stride(kVCols);
constexpr int kQElems = kBlockM * kQStride;                 // (BLOCK_M, HEAD_DIM) + pad
constexpr int kKElems = kBlockN * kKStride;                 // (BLOCK_N, HEAD_DIM) + pad
constexpr int kVElems = kBlockN * kVStride;                 // (BLOCK_N, V_COLS) + pad
constexpr int kBElems = kBiasTiled ? kBlockM * kBiasStride : 0;  // (BLOCK_M, BLOCK_N) + pad

static_assert(kHeadDim % 8 == 0 && kHeadDimV % 8 == 0, "head dims must be multiples of 8");
static_assert(kRowsPerWarp == 16 || kRowsPerWarp == 32, "block_m / warps must be 16 or 32");
static_assert(kBlockN % 16 == 0, "block_n must be a multiple of 16 (k16 steps of P V)");
static_assert(kStages >= 1, "stages must be >= 1");
static_assert(!kQInRegs || kHeadDim <= 256, "Q in registers indexes its fragments by a fully unrolled step");
static_assert(kSplit >= 1 && (kSplit - 1) * kDT < kDTAll, "split: every column slice needs a column");

// Copies `rows` x kCols elements (rows past `valid_rows` zero-filled) into shared memory.
// Copies a (BLOCK_M, BLOCK_N) bias tile: rows past `valid_rows` and columns past `valid_cols`
// are zero-filled (a chunk straddling the end copies only its valid bytes).
JITATTN_DEVICE void load_bias_tile(elem_t* smem, const elem_t* gmem, long long row_stride,
                                   int valid_rows, int valid_cols, int tid) {
  constexpr int kChunksPerRow = kBlockN / 8;
  constexpr int kChunks = kBlockM * kChunksPerRow;
#pragma unroll
  for (int c0 = 0; c0 < kChunks; c0 += kThreads) {
    const int c = c0 + tid;
    if (kChunks % kThreads == 0 || c < kChunks) {
      const int r = c / kChunksPerRow;
      const int col = (c % kChunksPerRow) * 8;
      const int bytes = r < valid_rows ? 2 * min(8, max(0, valid_cols - col)) : 0;
      const elem_t* src = bytes > 0 ? gmem + r * row_stride + col : gmem;
      cp_async_16(smem + r * kBiasStride + col, src, bytes);
    }
  }
}

// Columns past `valid_cols` (the end of the head dim in the last column slice) are zero-filled.
template <int kRows, int kCols, int kStride>
JITATTN_DEVICE void load_tile(elem_t* smem, const elem_t* gmem, long long row_stride,
                              int valid_rows, int tid, int valid_cols = kCols) {
  constexpr int kChunksPerRow = kCols / 8;
  constexpr int kChunks = kRows * kChunksPerRow;
  // Rows above 256 columns (head dims above 256, 4 warps): a loop, since a full unroll keeps
  // every chunk's 64-bit global offset live across the main loop and spills.
#pragma unroll(kCols > 256 ? 1 : (kChunks + kThreads - 1) / kThreads)
  for (int c0 = 0; c0 < kChunks; c0 += kThreads) {
    const int c = c0 + tid;
    if (kChunks % kThreads == 0 || c < kChunks) {
      const int r = c / kChunksPerRow;
      const int cc = c % kChunksPerRow;
      const bool valid = r < valid_rows && cc * 8 < valid_cols;
      const elem_t* src = valid ? gmem + r * row_stride + cc * 8 : gmem;
      cp_async_16(smem + r * kStride + cc * 8, src, valid ? 16 : 0);
    }
  }
}

}  // namespace jitattn_kernel

// At global scope so that the extern "C" symbol is also the NVRTC name expression.
extern "C" __global__ void __launch_bounds__(jitattn_kernel::kThreads, 1)
    JITATTN_KERNEL_NAME(const jitattn_kernel::AttnFwdParams p) {
  using namespace jitattn_kernel;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  elem_t* sQ = reinterpret_cast<elem_t*>(smem_raw);
  elem_t* sK = sQ + kQElems;                 // kStages x (BLOCK_N, HEAD_DIM)
  elem_t* sV = sK + kStages * kKElems;       // kStages x (BLOCK_N, HEAD_DIM_V)
  elem_t* sB = sV + kStages * kVElems;       // kStages x (BLOCK_M, BLOCK_N) bias tiles

  // Causal work grows with the query block, so the heaviest blocks go first: the last wave then
  // holds the shortest blocks and the tail is shorter.
  const int bx = kCausal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int m_block = bx / kSplit;
  const int slice = bx % kSplit;  // column slice of V and O
  // Columns of this slice inside the head dim (the last slice may be shorter).
  const int v_cols = kSplit == 1 ? kVCols : min(kVCols, kHeadDimV - slice * kVCols);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int tid = threadIdx.x;
  const int warp = tid / 32;
  const int lane = tid % 32;
  const int g = lane / 4;  // row within an m16 tile (and +8)
  const int t = lane % 4;  // column pair within an n8 tile

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
    if (p.seqused_q) len_q = min(p.seqused_q[b], p.seqlen_q);
    if (p.seqused_k) len_k = min(p.seqused_k[b], p.seqlen_k);
  }
  const int m0 = m_block * kBlockM;
  // Rows this CTA must write: packed sequences end at len_q; padded batches also zero their
  // rows in [len_q, seqlen_q).
  const int rows_out = min(kBlockM, (kPadded ? p.seqlen_q : len_q) - m0);
  if (rows_out <= 0) return;

  const int kvh = h / p.group;
  const long long qb = kPacked ? 0 : static_cast<long long>(b);
  const elem_t* gQ = static_cast<const elem_t*>(p.q) + qb * p.q_batch_stride +
                     (row_q0 + m0) * p.q_row_stride + h * p.q_head_stride;
  const elem_t* gK = static_cast<const elem_t*>(p.k) + qb * p.k_batch_stride +
                     row_k0 * p.k_row_stride + kvh * p.k_head_stride;
  const elem_t* gV = static_cast<const elem_t*>(p.v) + qb * p.v_batch_stride +
                     row_k0 * p.v_row_stride + kvh * p.v_head_stride + slice * kVCols;
  elem_t* gO = static_cast<elem_t*>(p.o) + qb * p.o_batch_stride + (row_q0 + m0) * p.o_row_stride +
               h * p.o_head_stride;
  float* gLse = kLse ? p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + row_q0 + m0
                     : nullptr;

  // ---- key blocks this query block can see (masks skip empty tiles) --------------------------
  const int offset = kBottomRight ? len_k - len_q : 0;
  const int m_last = min(m0 + kBlockM, len_q) - 1;  // last real query row of the block
  int n_end = len_k;
  int n_begin = 0;
  if (kCausal) n_end = min(n_end, m_last + offset + 1);
  if (kWindow && p.window_right >= 0) n_end = min(n_end, m_last + offset + p.window_right + 1);
  if (kWindow && p.window_left >= 0) n_begin = max(0, m0 + offset - p.window_left);
  const int nb_begin = n_begin / kBlockN;
  const int nb_end = (max(n_end, 0) + kBlockN - 1) / kBlockN;

  if (m0 >= len_q || nb_end <= nb_begin) {
    // Every row fully masked (or past the batch's length): output 0, LSE -inf (slice 0 writes
    // every column).
    if (slice != 0) return;
    for (int i = tid; i < rows_out * (kHeadDimV / 2); i += kThreads) {
      const int r = i / (kHeadDimV / 2);
      const int c = i % (kHeadDimV / 2);
      *reinterpret_cast<u32*>(gO + r * p.o_row_stride + 2 * c) = 0u;
    }
    if (kLse) {
      for (int r = tid; r < rows_out; r += kThreads) gLse[r] = neg_inf();
    }
    return;
  }

  ScoreMod mod;
  mod.init(p, b, h, len_q, len_k, offset, m0);
  // Bias rows of this query block (kBiasTiled): batch/head offsets, then row m0.
  const elem_t* gB =
      kBiasTiled ? static_cast<const elem_t*>(p.bias) + b * p.bias_batch_stride +
                       h * p.bias_head_stride + m0 * p.bias_row_stride
                 : nullptr;

  // ---- prologue: Q and the first kStages-1 K/V tiles in flight -------------------------------
  // kStages == 1 is FlashAttention-2's single-buffer schedule: V(n) streams in during S = Q K(n)^T
  // and K(n+1) during softmax and P V(n). Half the K/V shared memory of a ring, so two CTAs fit
  // per SM at large head dims and one computes while the other waits (bench/NOTES.md).
  load_tile<kBlockM, kHeadDim, kQStride>(sQ, gQ, p.q_row_stride, len_q - m0, tid);
  if constexpr (kStages == 1) {
    const int n0 = nb_begin * kBlockN;
    load_tile<kBlockN, kHeadDim, kKStride>(sK, gK + n0 * p.k_row_stride, p.k_row_stride,
                                           len_k - n0, tid);
    if constexpr (kBiasTiled) {
      load_bias_tile(sB, gB + n0, p.bias_row_stride, len_q - m0, len_k - n0, tid);
    }
  }
  cp_async_commit();
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    const int nb = nb_begin + s;
    if (nb < nb_end) {
      const int n0 = nb * kBlockN;
      load_tile<kBlockN, kHeadDim, kKStride>(sK + s * kKElems, gK + n0 * p.k_row_stride,
                                             p.k_row_stride, len_k - n0, tid);
      load_tile<kBlockN, kVCols, kVStride>(sV + s * kVElems, gV + n0 * p.v_row_stride,
                                           p.v_row_stride, len_k - n0, tid, v_cols);
      if constexpr (kBiasTiled) {
        load_bias_tile(sB + s * kBElems, gB + n0, p.bias_row_stride, len_q - m0, len_k - n0, tid);
      }
    }
    cp_async_commit();
  }

  const int warp_row0 = warp * kRowsPerWarp;  // first row of this warp within the block
  float acc_o[kMT][kDT][4];                   // (ROWS_PER_WARP, HEAD_DIM_V) per warp
  float row_max[kMT][2];                      // raw scores or log2 domain (see kRawScores)
  float row_sum[kMT][2];                      // per-thread partial sums, reduced at the end
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int d = 0; d < kDT; ++d) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc_o[mt][d][e] = 0.0f;
    }
    row_max[mt][0] = row_max[mt][1] = neg_inf();
    row_sum[mt][0] = row_sum[mt][1] = 0.0f;
  }

  u32 q_frag[kQInRegs ? kMT : 1][kQInRegs ? kQSteps : 1][4];  // (16, 16) A fragments

  for (int nb = nb_begin; nb < nb_end; ++nb) {
    const int it = nb - nb_begin;
    if constexpr (kStages == 1) {
      cp_async_wait<0>();
      __syncthreads();  // K(it) landed; every warp finished P V(it-1), so sV is free
      const int n0 = nb * kBlockN;
      load_tile<kBlockN, kVCols, kVStride>(sV, gV + n0 * p.v_row_stride, p.v_row_stride,
                                           len_k - n0, tid, v_cols);
      cp_async_commit();
    } else {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile `it` landed; every warp finished with the slot refilled below
    {
      const int nf = nb + kStages - 1;
      if (nf < nb_end) {
        const int slot = (it + kStages - 1) % kStages;
        const int n0 = nf * kBlockN;
        load_tile<kBlockN, kHeadDim, kKStride>(sK + slot * kKElems, gK + n0 * p.k_row_stride,
                                               p.k_row_stride, len_k - n0, tid);
        load_tile<kBlockN, kVCols, kVStride>(sV + slot * kVElems, gV + n0 * p.v_row_stride,
                                             p.v_row_stride, len_k - n0, tid, v_cols);
        if constexpr (kBiasTiled) {
          load_bias_tile(sB + slot * kBElems, gB + n0, p.bias_row_stride, len_q - m0, len_k - n0,
                         tid);
        }
      }
      cp_async_commit();
    }
    }
    const elem_t* tK = sK + (it % kStages) * kKElems;
    const elem_t* tV = sV + (it % kStages) * kVElems;

    if constexpr (kQInRegs) {
      if (it == 0) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        const elem_t* q_row = sQ + (warp_row0 + mt * 16 + (lane % 16)) * kQStride;
#pragma unroll
        for (int ks = 0; ks < kK16; ++ks) ldmatrix_x4(q_frag[mt][ks], q_row + ks * 16 + (lane / 16) * 8);
        if constexpr (kKTail) {
          u32 a2[2];
          ldmatrix_x2(a2, q_row + kK16 * 16);
          q_frag[mt][kK16][0] = a2[0];
          q_frag[mt][kK16][1] = a2[1];
        }
      }
      }
    }

    // ---- S = Q K^T ---------------------------------------------------------------------------
    float acc_s[kMT][kNT][4];  // (ROWS_PER_WARP, BLOCK_N) per warp
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc_s[mt][nt][e] = 0.0f;
      }
    }
    // Above head dim 256, 8 steps at a time: fully unrolled, ptxas hoists the Q fragments of all
    // 32 steps and spills with a per-element bias (NVRTC 13.0, tests/compile_grid_test.cpp).
#pragma unroll(kHeadDim > 256 ? 8 : kK16)
    for (int ks = 0; ks < kK16; ++ks) {
      u32 qa[kMT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if constexpr (kQInRegs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) qa[mt][e] = q_frag[mt][ks][e];
        } else {
          ldmatrix_x4(qa[mt], sQ + (warp_row0 + mt * 16 + (lane % 16)) * kQStride + ks * 16 +
                                  (lane / 16) * 8);
        }
      }
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        u32 kb[4];  // b0/b1 of n-tiles 2np and 2np+1
        ldmatrix_x4(kb, tK + (np * 16 + (lane / 16) * 8 + (lane % 8)) * kKStride + ks * 16 +
                            ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_16816(acc_s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma_16816(acc_s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }
    if constexpr (kKTail) {
      u32 qa[kMT][2];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
        if constexpr (kQInRegs) {
          qa[mt][0] = q_frag[mt][kK16][0];
          qa[mt][1] = q_frag[mt][kK16][1];
        } else {
          ldmatrix_x2(qa[mt], sQ + (warp_row0 + mt * 16 + (lane % 16)) * kQStride + kK16 * 16);
        }
      }
#pragma unroll
      for (int nq = 0; nq < kNT / 4; ++nq) {
        u32 kb[4];  // b0 of n-tiles 4nq .. 4nq+3
        ldmatrix_x4(kb, tK + (nq * 32 + lane) * kKStride + kK16 * 16);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
          for (int j = 0; j < 4; ++j) mma_1688(acc_s[mt][4 * nq + j], qa[mt], kb[j]);
        }
      }
      if constexpr (kNT % 4 != 0) {
        u32 kb[2];  // b0 of the last two n-tiles
        ldmatrix_x2(kb, tK + ((kNT - 2) * 8 + (lane % 16)) * kKStride + kK16 * 16);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_1688(acc_s[mt][kNT - 2], qa[mt], kb[0]);
          mma_1688(acc_s[mt][kNT - 1], qa[mt], kb[1]);
        }
      }
    }

    // ---- score modifiers and masks --------------------------------------------------------------
    const int n0 = nb * kBlockN;
    if constexpr (!kRawScores) {
      mod.begin_tile(sB + (it % kStages) * kBElems, n0);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qi = m0 + warp_row0 + mt * 16 + g + (e / 2) * 8;
            const int kj = n0 + nt * 8 + 2 * t + (e % 2);
            acc_s[mt][nt][e] = mod.apply(acc_s[mt][nt][e], qi, kj);
          }
        }
      }
    }
    // Whole-CTA decision: only tiles that cross the sequence end or a mask boundary evaluate
    // the mask per element.
    bool need_mask = n0 + kBlockN > len_k;
    if (kCausal) need_mask |= n0 + kBlockN - 1 > m0 + offset;
    if (kWindow && p.window_right >= 0) need_mask |= n0 + kBlockN - 1 > m0 + offset + p.window_right;
    if (kWindow && p.window_left >= 0) need_mask |= n0 < m_last + offset - p.window_left;
    if (need_mask) {
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qi = m0 + warp_row0 + mt * 16 + g + (e / 2) * 8;
            const int kj = n0 + nt * 8 + 2 * t + (e % 2);
            const int rel = kj - (qi + offset);
            bool masked = kj >= len_k;
            if (kCausal) masked |= rel > 0;
            if (kWindow) {
              masked |= p.window_right >= 0 && rel > p.window_right;
              masked |= p.window_left >= 0 && rel < -p.window_left;
            }
            if (masked) acc_s[mt][nt][e] = neg_inf();
          }
        }
      }
    }

    if constexpr (kStages == 1) {
      cp_async_wait<0>();
      __syncthreads();  // V(it) landed; every warp finished with K(it) and the bias tile
      if (nb + 1 < nb_end) {
        const int n1 = (nb + 1) * kBlockN;
        load_tile<kBlockN, kHeadDim, kKStride>(sK, gK + n1 * p.k_row_stride, p.k_row_stride,
                                               len_k - n1, tid);
        if constexpr (kBiasTiled) {
          load_bias_tile(sB, gB + n1, p.bias_row_stride, len_q - m0, len_k - n1, tid);
        }
      }
      cp_async_commit();
    }

    // ---- online softmax (exp2 domain; scale folded into one FMA when kRawScores) ---------------
    // Rescaling O unconditionally measured faster than skipping it when no row maximum moved
    // (a warp vote and branch: d128 275 -> 245 TFLOP/s on the H200, bench/NOTES.md).
    float correction[kMT][2];
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = row_max[mt][hf];
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
          mx = fmaxf(mx, fmaxf(acc_s[mt][nt][2 * hf], acc_s[mt][nt][2 * hf + 1]));
        }
        mx = quad_max(mx);
        // A row with no visible key so far keeps max -inf; use 0 so exp2 sees -inf, not NaN.
        const float m_use = (mx == neg_inf()) ? 0.0f : mx;
        const float m_scaled = m_use * kExpScale;
        correction[mt][hf] = fast_exp2(row_max[mt][hf] * kExpScale - m_scaled);
        row_max[mt][hf] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = fast_exp2(fmaf(acc_s[mt][nt][2 * hf + e], kExpScale, -m_scaled));
            acc_s[mt][nt][2 * hf + e] = pe;
            sum += pe;
          }
        }
        row_sum[mt][hf] = row_sum[mt][hf] * correction[mt][hf] + sum;
      }
    }
    if constexpr (kDropout) {
      // Dropout after the row sums (the LSE is of the probabilities before dropout): one Philox
      // call covers a thread's two adjacent columns; 1 / (1 - p) is applied in the epilogue.
      const unsigned bh = static_cast<unsigned>(b * p.heads_q + h);
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int qi = m0 + warp_row0 + mt * 16 + g + hf * 8;
            const int kj = n0 + nt * 8 + 2 * t;
            const Philox4 bits = dropout_bits4(p.dropout_seed, p.dropout_offset, bh,
                                               static_cast<unsigned>(qi), static_cast<unsigned>(kj));
            if (philox_word(bits, kj & 3) < p.dropout_threshold) acc_s[mt][nt][2 * hf] = 0.0f;
            if (philox_word(bits, (kj + 1) & 3) < p.dropout_threshold) acc_s[mt][nt][2 * hf + 1] = 0.0f;
          }
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int d = 0; d < kDT; ++d) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          acc_o[mt][d][2 * hf] *= correction[mt][hf];
          acc_o[mt][d][2 * hf + 1] *= correction[mt][hf];
        }
      }
    }

    // ---- O += P V: P from the S accumulators, V via ldmatrix.trans -----------------------------
    // P is packed to 16-bit pairs for the whole tile first, so the fp32 S accumulators die here:
    // half the registers during P V, which is what lets 32 rows per warp fit at larger head dims.
    u32 pa[kMT][kBlockN / 16][4];  // (16, 16) A fragments of P
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        pa[mt][kk][0] = pack2(acc_s[mt][2 * kk][0], acc_s[mt][2 * kk][1]);
        pa[mt][kk][1] = pack2(acc_s[mt][2 * kk][2], acc_s[mt][2 * kk][3]);
        pa[mt][kk][2] = pack2(acc_s[mt][2 * kk + 1][0], acc_s[mt][2 * kk + 1][1]);
        pa[mt][kk][3] = pack2(acc_s[mt][2 * kk + 1][2], acc_s[mt][2 * kk + 1][3]);
      }
    }
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      const elem_t* v_rows = tV + (kk * 16 + ((lane / 8) % 2) * 8 + (lane % 8)) * kVStride;
#pragma unroll
      for (int dp = 0; dp < kDT / 2; ++dp) {
        u32 vb[4];  // b0/b1 of O n-tiles 2dp and 2dp+1
        ldmatrix_x4_trans(vb, v_rows + dp * 16 + (lane / 16) * 8);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          mma_16816(acc_o[mt][2 * dp], pa[mt][kk], vb[0], vb[1]);
          mma_16816(acc_o[mt][2 * dp + 1], pa[mt][kk], vb[2], vb[3]);
        }
      }
      if constexpr (kDT % 2 != 0) {
        u32 vb[2];
        ldmatrix_x2_trans(vb, tV + (kk * 16 + (lane % 16)) * kVStride + (kDT - 1) * 8);
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) mma_16816(acc_o[mt][kDT - 1], pa[mt][kk], vb[0], vb[1]);
      }
    }
  }

  // ---- epilogue: normalise, write O (and LSE) ------------------------------------------------
  cp_async_wait<0>();
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float sum = quad_sum(row_sum[mt][hf]);
      const int r = warp_row0 + mt * 16 + g + hf * 8;  // row within the block
      const bool real = m0 + r < len_q;                // padded rows past len_q write 0
      float inv = (sum > 0.0f && real) ? 1.0f / sum : 0.0f;
      if constexpr (kDropout) inv *= p.dropout_scale;  // kept probabilities scale by 1 / (1 - p)
      if (r < rows_out) {
        elem_t* o_row = gO + r * p.o_row_stride + slice * kVCols;
#pragma unroll
        for (int d = 0; d < kDT; ++d) {
          if (kSplit * kDT == kDTAll || d * 8 < v_cols) {
            *reinterpret_cast<u32*>(o_row + d * 8 + 2 * t) =
                pack2(acc_o[mt][d][2 * hf] * inv, acc_o[mt][d][2 * hf + 1] * inv);
          }
        }
        if (kLse && t == 0 && slice == 0) {
          gLse[r] = (sum > 0.0f && real)
                        ? (row_max[mt][hf] * kExpScale + __log2f(sum)) * kLn2
                        : neg_inf();
        }
      }
    }
  }
}
