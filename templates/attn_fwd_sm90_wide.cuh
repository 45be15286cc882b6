// Forward attention, Hopper family (sm_90a), V head dims above 256: the column-split kernel
// (TileConfig split 2), beside attn_fwd_sm90.cuh (same producer and TMA ring).
//
// O of 64 query rows x dv 512 is 256 fp32 registers per thread in one warpgroup: too many. Here
// the two consumer warpgroups share one 64-row query block and split both products:
//   S = Q K^T   warpgroup w computes the scores of key columns [w * BLOCK_N / 2, (w + 1) * BLOCK_N / 2)
//               of the tile (wgmma m64 n(BLOCK_N / 2), both operands from shared memory);
//   softmax     each reduces its half's row maxima, the two exchange them through shared memory
//               (named barrier 1), so both apply the same running maximum and correction; each
//               keeps the row sums of its own columns (added together in the epilogue);
//   P           each writes its half of P (16-bit, swizzled as wgmma's K-major A operand) to one
//               shared (64, BLOCK_N) tile, fenced for the async proxy (named barrier 2);
//   O += P V    warpgroup w accumulates O[:, w * DV_PAD / 2 ...] over the whole key tile, P and
//               its half of V from shared memory: 128 O registers per thread at dv 512.
// No product is computed twice. Barrier 1 of tile j+1 also guarantees that both warpgroups have
// finished reading P of tile j (each waits on its P V before the next S), and barrier 2 of tile j
// that both have read the maxima of tile j before either writes those of tile j+1.
// The producer's K and V slots are released apart (K after both S halves, V after both P V), so
// even a single stage (head dim 512: Q 64 KiB + K and V of 64 keys, 64 KiB each) streams the next
// K during the softmax and P V, and the next V during S.
//
// V's padded head dim kHeadDimVPad is a multiple of 32 and each half (kHalfV columns) is whole
// swizzled panels; panels past the real head dim are zero-filled by the TMA unit and never stored.
//
// Expects, from the generator: JITATTN_BF16, JITATTN_KERNEL_NAME, namespace cfg with the
// compile-time constants, struct ScoreMod, and wgmma_s (S, N = BLOCK_N / 2) and wgmma_pv (O, N =
// kHalfV, A = P from shared memory, B = V transposed).

namespace jitattn_kernel {

using namespace cfg;

constexpr int kThreads = 128 * (kConsumers + 1);
// Register split after setmaxnreg (65536 per SM, one CTA): 128 x 24 + 256 x 240 = 64512.
constexpr int kProducerRegs = 24;
constexpr int kConsumerRegs = 240;
constexpr int kPanelColsQK = kSwizzleQK / 2;  // elements per panel row
constexpr int kPanelColsV = kSwizzleV / 2;
constexpr int kPanelsQK = kHeadDimPad / kPanelColsQK;
constexpr int kPanelsV = kHeadDimVPad / kPanelColsV;
constexpr int kHalfV = kHeadDimVPad / 2;            // O columns per consumer warpgroup
constexpr int kPanelsHalfV = kHalfV / kPanelColsV;  // V panels per consumer warpgroup
constexpr int kHalfN = kBlockN / 2;                 // S columns per consumer warpgroup
// P tile (64, BLOCK_N), 16-bit: panels of kSwizzleP-byte rows.
constexpr int kSwizzleP = (kBlockN * 2) % 128 == 0 ? 128 : (kBlockN * 2) % 64 == 0 ? 64 : 32;
constexpr int kPanelColsP = kSwizzleP / 2;
constexpr int kPanelsP = kBlockN / kPanelColsP;
__host__ __device__ constexpr int panel_bytes(int rows, int swizzle) {
  return (rows * swizzle + 1023) / 1024 * 1024;  // each panel on a 1 KiB boundary
}
constexpr int kQPanelBytes = panel_bytes(kBlockM, kSwizzleQK);  // (BLOCK_M, PANEL_COLS_QK)
constexpr int kKPanelBytes = panel_bytes(kBlockN, kSwizzleQK);  // (BLOCK_N, PANEL_COLS_QK)
constexpr int kVPanelBytes = panel_bytes(kBlockN, kSwizzleV);   // (BLOCK_N, PANEL_COLS_V)
constexpr int kPPanelBytes = panel_bytes(kBlockM, kSwizzleP);   // (BLOCK_M, PANEL_COLS_P)
constexpr int kQBytes = kPanelsQK * kQPanelBytes;
constexpr int kKStageBytes = kPanelsQK * kKPanelBytes;
constexpr int kVStageBytes = kPanelsV * kVPanelBytes;
constexpr int kPBytes = kPanelsP * kPPanelBytes;
constexpr int kRedBytes = 2 * 64 * 4;  // row maxima (then row sums) of each warpgroup, fp32
// Bytes each TMA transaction delivers (full boxes, zero-filled parts included).
constexpr u32 kQTxBytes = kPanelsQK * kBlockM * kSwizzleQK;
constexpr u32 kKTxBytes = kPanelsQK * kBlockN * kSwizzleQK;
constexpr u32 kVTxBytes = kPanelsV * kBlockN * kSwizzleV;
constexpr int kSNRegs = kHalfN / 2;  // S accumulator floats per thread (64 x BLOCK_N / 2 / 128)
constexpr int kONRegs = kHalfV / 2;  // O accumulator floats per thread (its half)
constexpr int kNT = kHalfN / 8;      // n8 column groups of S (its half)
constexpr int kDT = kHalfV / 8;      // n8 column groups of O (its half)

static_assert(kConsumers == 2, "two consumer warpgroups, one per half of S's and O's columns");
static_assert(kBlockM == 64, "block_m must be 64: both consumers share the query rows");
static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "block_n: multiple of 16 up to 256");
static_assert(kHalfV % kPanelColsV == 0, "each half of V must be whole panels");
static_assert(!kOverlap && !kPingPong && !kPolyExp, "the column-split kernel runs the serial schedule");
static_assert(kHeadDimPad % 16 == 0 && kHeadDimVPad % 32 == 0, "padded head dims: k16 steps, halves of 16");
static_assert(kHeadDimPad % kPanelColsQK == 0 && kBlockN % kPanelColsP == 0, "whole panels");
static_assert(kQBytes + kStages * (kKStageBytes + kVStageBytes) + kPBytes + kRedBytes + 1024 +
                  8 * (1 + 4 * kStages) == kSmemBytes,
              "shared-memory layout disagrees with the generator's shared_memory_bytes");

// Q (as A of S = Q K^T, K-major) for k16 step ks.
JITATTN_DEVICE u64 desc_q(u32 sq, int ks) {
  const int col = ks * 16;
  return make_smem_desc<kSwizzleQK>(sq + (col / kPanelColsQK) * kQPanelBytes + (col % kPanelColsQK) * 2, 16);
}
// K (as B of S = Q K^T, K-major) for k16 step ks; `sk` points at the warpgroup's first key row
// (a multiple of 8 rows into the panel, so the swizzle phase is unchanged).
JITATTN_DEVICE u64 desc_k(u32 sk, int ks) {
  const int col = ks * 16;
  return make_smem_desc<kSwizzleQK>(sk + (col / kPanelColsQK) * kKPanelBytes + (col % kPanelColsQK) * 2, 16);
}
// P (as A of O += P V, K-major: keys contiguous) for keys kk*16 .. kk*16+15.
JITATTN_DEVICE u64 desc_p(u32 sp, int kk) {
  const int col = kk * 16;
  return make_smem_desc<kSwizzleP>(sp + (col / kPanelColsP) * kPPanelBytes + (col % kPanelColsP) * 2, 16);
}
// V (as B of O += P V, MN-major: head dim contiguous) for keys kk*16 .. kk*16+15; the leading
// byte offset steps across head-dim panels. `sv` points at the warpgroup's first panel.
JITATTN_DEVICE u64 desc_v(u32 sv, int kk) {
  return make_smem_desc<kSwizzleV>(sv + kk * 16 * kSwizzleV, kVPanelBytes);
}
// Byte offset of P element (row, col) in the swizzled tile: the 16-byte chunk index XOR the row
// within its 8-row group, as the TMA unit swizzles Q and K (Swizzle<log2(kSwizzleP / 16), 4, 3>).
JITATTN_DEVICE u32 p_offset(int row, int col) {
  const u32 off = static_cast<u32>(row * kSwizzleP + (col % kPanelColsP) * 2);
  return static_cast<u32>((col / kPanelColsP) * kPPanelBytes) + (off ^ (((off >> 7) & (kSwizzleP / 16 - 1)) << 4));
}
JITATTN_DEVICE void st_shared_f32(u32 addr, float v) {
  asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}
JITATTN_DEVICE float ld_shared_f32(u32 addr) {
  float v;
  asm volatile("ld.shared.f32 %0, [%1];\n" : "=f"(v) : "r"(addr) : "memory");
  return v;
}
// Orders this thread's shared-memory writes (generic proxy) before wgmma's reads (async proxy).
JITATTN_DEVICE void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

}  // namespace jitattn_kernel

// At global scope so that the extern "C" symbol is also the NVRTC name expression.
extern "C" __global__ void __launch_bounds__(jitattn_kernel::kThreads, 1)
    JITATTN_KERNEL_NAME(const __grid_constant__ jitattn_kernel::AttnFwdTmaParams params) {
  using namespace jitattn_kernel;
  const AttnFwdParams& p = params.p;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const int m_block = kCausal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y;
  const int b = blockIdx.z;
  const int tid = threadIdx.x;

  // ---- sequence extents of this batch -------------------------------------------------------
  int len_q = p.seqlen_q;
  int len_k = p.seqlen_k;
  int row_q0 = 0, row_k0 = 0;  // first row of this batch along the seq dim (packed varlen)
  if (kPacked) {
    row_q0 = p.cu_seqlens_q[b];
    row_k0 = p.cu_seqlens_k[b];
    len_q = p.cu_seqlens_q[b + 1] - row_q0;
    len_k = p.cu_seqlens_k[b + 1] - row_k0;
  }
  if (kPadded) {
    if (p.seqused_q) len_q = min(p.seqused_q[b], p.seqlen_q);
    if (p.seqused_k) len_k = min(p.seqused_k[b], p.seqlen_k);
  }
  const int m0 = m_block * kBlockM;
  // Rows this CTA must write: packed sequences end at len_q; padded batches also zero their rows
  // in [len_q, seqlen_q).
  const int rows_out = min(kBlockM, (kPadded ? p.seqlen_q : len_q) - m0);
  if (rows_out <= 0) return;
  const int kvh = h / p.group;
  // TMA coordinates: packed sequences sit in batch 0 of the maps, from their first row on. Rows of
  // a tile past the sequence belong to the next one (or are zero-filled past the tensor): masked
  // keys, and query rows that are never written.
  const int tma_b = kPacked ? 0 : b;

  // ---- key blocks this query block can see (masks skip empty tiles) ----------------------------
  const int offset = kBottomRight ? len_k - len_q : 0;
  const int m_last = min(m0 + kBlockM, len_q) - 1;
  int n_end = len_k;
  int n_begin = 0;
  if (kCausal) n_end = min(n_end, m_last + offset + 1);
  if (kWindow && p.window_right >= 0) n_end = min(n_end, m_last + offset + p.window_right + 1);
  if (kWindow && p.window_left >= 0) n_begin = max(0, m0 + offset - p.window_left);
  const int nb_begin = n_begin / kBlockN;
  const int nb_end = (max(n_end, 0) + kBlockN - 1) / kBlockN;

  const long long ob = kPacked ? 0 : static_cast<long long>(b);
  elem_t* gO = static_cast<elem_t*>(p.o) + ob * p.o_batch_stride + (row_q0 + m0) * p.o_row_stride +
               h * p.o_head_stride;
  float* gLse = kLse ? p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + row_q0 + m0 : nullptr;
  if (m0 >= len_q || nb_end <= nb_begin) {
    // Every row fully masked: output 0, LSE -inf. Uniform across the CTA, before any barrier.
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

  // ---- shared memory: Q, the K and V rings, then the mbarriers ---------------------------------
  const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const u32 sQ = base;
  const u32 sK = sQ + kQBytes;                       // kStages x (BLOCK_N, HEAD_DIM_PAD) panels
  const u32 sV = sK + kStages * kKStageBytes;        // kStages x (BLOCK_N, HEAD_DIM_V_PAD) panels
  const u32 sP = sV + kStages * kVStageBytes;        // (BLOCK_M, BLOCK_N) P panels
  const u32 sRed = sP + kPBytes;                     // 2 x 64 fp32: row maxima / row sums
  const u32 bar_q = sRed + kRedBytes;
  const u32 bar_full_k = bar_q + 8;                  // kStages each
  const u32 bar_full_v = bar_full_k + 8 * kStages;
  // K and V slots are released apart (K after S, V after P V), so with one stage the next K
  // streams in during the softmax and P V, and the next V during S.
  const u32 bar_empty_k = bar_full_v + 8 * kStages;
  const u32 bar_empty_v = bar_empty_k + 8 * kStages;
  const int n_tiles = nb_end - nb_begin;

  if (tid == 0) {
    mbar_init(bar_q, 1);
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bar_full_k + 8 * s, 1);
      mbar_init(bar_full_v + 8 * s, 1);
      mbar_init(bar_empty_k + 8 * s, 128 * kConsumers);
      mbar_init(bar_empty_v + 8 * s, 128 * kConsumers);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    // ---- producer: one thread drives the TMA unit -------------------------------------------
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 0) {
      tma_prefetch_descriptor(&params.tma_k);
      tma_prefetch_descriptor(&params.tma_v);
      mbar_arrive_expect_tx(bar_q, kQTxBytes);
#pragma unroll
      for (int pnl = 0; pnl < kPanelsQK; ++pnl) {
        tma_load_4d(sQ + pnl * kQPanelBytes, &params.tma_q, bar_q, pnl * kPanelColsQK, row_q0 + m0, h, tma_b);
      }
      for (int it = 0; it < n_tiles; ++it) {
        const int s = it % kStages;
        const u32 phase = static_cast<u32>(it / kStages) & 1u;
        if (it >= kStages) mbar_wait(bar_empty_k + 8 * s, phase ^ 1u);  // consumers are done with K
        const int n0 = (nb_begin + it) * kBlockN;
        mbar_arrive_expect_tx(bar_full_k + 8 * s, kKTxBytes);
#pragma unroll
        for (int pnl = 0; pnl < kPanelsQK; ++pnl) {
          tma_load_4d(sK + s * kKStageBytes + pnl * kKPanelBytes, &params.tma_k, bar_full_k + 8 * s,
                      pnl * kPanelColsQK, row_k0 + n0, kvh, tma_b);
        }
        if (it >= kStages) mbar_wait(bar_empty_v + 8 * s, phase ^ 1u);  // ... and with V
        mbar_arrive_expect_tx(bar_full_v + 8 * s, kVTxBytes);
#pragma unroll
        for (int pnl = 0; pnl < kPanelsV; ++pnl) {
          tma_load_4d(sV + s * kVStageBytes + pnl * kVPanelBytes, &params.tma_v, bar_full_v + 8 * s,
                      pnl * kPanelColsV, row_k0 + n0, kvh, tma_b);
        }
      }
    }
  } else {
    // ---- consumers: the block's 64 rows each, half of S's and of O's columns ----------------------
    setmaxnreg_inc<kConsumerRegs>();
    const int wg = warpgroup - 1;
    const int wtid = tid % 128;
    const int warp = wtid / 32;  // 16 rows per warp
    const int lane = tid % 32;
    const int g = lane / 4;      // row within the warp's 16 (and +8)
    const int t = lane % 4;      // column pair within an n8 group
    const int col0 = wg * kHalfV;  // first O column of this warpgroup
    const int key0 = wg * kHalfN;  // first key column of this warpgroup within a tile
    const int r_lo = warp * 16 + g;  // this thread's rows: r_lo and r_lo + 8

    ScoreMod mod;
    mod.init(p, b, h, len_q, len_k, offset, m0);

    float acc_o[kONRegs];  // (64, HALF_V) per warpgroup
    float row_max[2];      // rows r_lo, r_lo + 8: raw scores or log2 domain (kRawScores)
    float row_sum[2];      // per-thread partial sums of this warpgroup's columns
#pragma unroll
    for (int i = 0; i < kONRegs; ++i) acc_o[i] = 0.0f;
    row_max[0] = row_max[1] = neg_inf();
    row_sum[0] = row_sum[1] = 0.0f;
    auto phase_of = [](int it) { return static_cast<u32>(it / kStages) & 1u; };

    mbar_wait(bar_q, 0);
    for (int it = 0; it < n_tiles; ++it) {
      const int s = it % kStages;
      const int n0 = (nb_begin + it) * kBlockN;
      // ---- S = Q K^T for this warpgroup's key columns -------------------------------------------
      float acc_s[kSNRegs];  // (64, BLOCK_N / 2) per warpgroup
      mbar_wait(bar_full_k + 8 * s, phase_of(it));
      fence_regs(acc_s);
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kHeadDimPad / 16; ++ks) {
        wgmma_s(acc_s, desc_q(sQ, ks), desc_k(sK + s * kKStageBytes + key0 * kSwizzleQK, ks), ks > 0 ? 1 : 0);
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(acc_s);
      mbar_arrive(bar_empty_k + 8 * s);  // this thread is done with K of stage s

      // ---- score modifiers and masks --------------------------------------------------------------
      const int k0 = n0 + key0;
      if constexpr (!kRawScores) {
        mod.begin_tile(nullptr, k0);
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qi = m0 + r_lo + (e / 2) * 8;
            const int kj = k0 + nt * 8 + 2 * t + (e % 2);
            acc_s[4 * nt + e] = mod.apply(acc_s[4 * nt + e], qi, kj);
          }
        }
      }
      // Whole-tile decision (both warpgroups agree): only tiles crossing the sequence end or a
      // mask boundary evaluate the mask per element.
      bool need_mask = n0 + kBlockN > len_k;
      if (kCausal) need_mask |= n0 + kBlockN - 1 > m0 + offset;
      if (kWindow && p.window_right >= 0) need_mask |= n0 + kBlockN - 1 > m0 + offset + p.window_right;
      if (kWindow && p.window_left >= 0) need_mask |= n0 < m0 + 63 + offset - p.window_left;
      if (need_mask) {
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int qi = m0 + r_lo + (e / 2) * 8;
            const int kj = k0 + nt * 8 + 2 * t + (e % 2);
            const int rel = kj - (qi + offset);
            bool masked = kj >= len_k;
            if (kCausal) masked |= rel > 0;
            if (kWindow) {
              masked |= p.window_right >= 0 && rel > p.window_right;
              masked |= p.window_left >= 0 && rel < -p.window_left;
            }
            if (masked) acc_s[4 * nt + e] = neg_inf();
          }
        }
      }

      // ---- row maxima: this half's, exchanged with the other warpgroup's (barrier 1) --------------
      float tile_max[2];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        float mx = neg_inf();
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(acc_s[4 * nt + 2 * hf], acc_s[4 * nt + 2 * hf + 1]));
        tile_max[hf] = quad_max(mx);
        if (t == 0) st_shared_f32(sRed + 4 * (wg * 64 + r_lo + 8 * hf), tile_max[hf]);
      }
      named_bar_sync(1, 256);
      float correction[2];
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float other = ld_shared_f32(sRed + 4 * ((1 - wg) * 64 + r_lo + 8 * hf));
        float mx = fmaxf(row_max[hf], fmaxf(tile_max[hf], other));
        // kLazyRescale: both warpgroups decide alike (the same maxima), so their halves of O stay in step.
        if constexpr (kLazyRescale) mx = lazy_row_max(mx, row_max[hf], kExpScale);
        // A row with no visible key so far keeps max -inf; use 0 so exp2 sees -inf, not NaN.
        const float m_scaled = (mx == neg_inf() ? 0.0f : mx) * kExpScale;
        correction[hf] = fast_exp2(row_max[hf] * kExpScale - m_scaled);
        row_max[hf] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = fast_exp2(fmaf(acc_s[4 * nt + 2 * hf + e], kExpScale, -m_scaled));
            acc_s[4 * nt + 2 * hf + e] = pe;
            sum += pe;
          }
        }
        row_sum[hf] = row_sum[hf] * correction[hf] + sum;
      }
      // ---- P (16-bit) into the shared tile, visible to both warpgroups' wgmma (barrier 2) ---------
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          st_shared_u32(sP + p_offset(r_lo + 8 * hf, key0 + nt * 8 + 2 * t),
                        pack2(acc_s[4 * nt + 2 * hf], acc_s[4 * nt + 2 * hf + 1]));
        }
      }
      fence_proxy_async();
      // kLazyRescale: a warp none of whose rows moved its max skips the rescale.
      const bool rescale = !kLazyRescale || warp_rescales(correction);
#pragma unroll
      for (int d = 0; d < kDT && rescale; ++d) {
        acc_o[4 * d + 0] *= correction[0];
        acc_o[4 * d + 1] *= correction[0];
        acc_o[4 * d + 2] *= correction[1];
        acc_o[4 * d + 3] *= correction[1];
      }
      named_bar_sync(2, 256);

      // ---- O[:, half] += P V[:, half] ---------------------------------------------------------------
      mbar_wait(bar_full_v + 8 * s, phase_of(it));
      fence_regs(acc_o);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < kBlockN / 16; ++kk) {
        wgmma_pv(acc_o, desc_p(sP, kk), desc_v(sV + s * kVStageBytes + wg * kPanelsHalfV * kVPanelBytes, kk));
      }
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(acc_o);
      mbar_arrive(bar_empty_v + 8 * s);  // this thread is done with V of stage s
    }

    // ---- epilogue: add the two halves' row sums, normalise, write O (and LSE) -------------------------
    // The maxima slots are free: both warpgroups read them before barrier 2 of the last tile.
    float sum_mine[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      sum_mine[hf] = quad_sum(row_sum[hf]);
      if (t == 0) st_shared_f32(sRed + 4 * (wg * 64 + r_lo + 8 * hf), sum_mine[hf]);
    }
    named_bar_sync(1, 256);
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float sum = sum_mine[hf] + ld_shared_f32(sRed + 4 * ((1 - wg) * 64 + r_lo + 8 * hf));
      const int r = r_lo + hf * 8;      // row within the block
      const bool real = m0 + r < len_q;  // padded rows past len_q write 0
      const float inv = (sum > 0.0f && real) ? 1.0f / sum : 0.0f;
      if (r < rows_out) {
        elem_t* o_row = gO + r * p.o_row_stride + col0;
#pragma unroll
        for (int d = 0; d < kDT; ++d) {
          if (kHeadDimVPad == kHeadDimV || col0 + d * 8 < kHeadDimV) {
            *reinterpret_cast<u32*>(o_row + d * 8 + 2 * t) =
                pack2(acc_o[4 * d + 2 * hf] * inv, acc_o[4 * d + 2 * hf + 1] * inv);
          }
        }
        if (kLse && t == 0 && wg == 0) {
          gLse[r] = (sum > 0.0f && real) ? (row_max[hf] * kExpScale + __log2f(sum)) * kLn2 : neg_inf();
        }
      }
    }
  }
}
