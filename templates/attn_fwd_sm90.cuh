// Forward attention, Hopper family (sm_90a): wgmma, TMA and warp specialisation.
//
// One CTA computes kBlockM = 64 * kConsumers query rows of one (batch, head). Warpgroup 0 is the
// producer: one thread issues TMA bulk tensor copies of Q (once) and of the K tiles, a second one
// those of the V tiles, into a kStages-deep shared-memory ring, each stage completing on its own
// "full" mbarrier (K and V apart, so S = Q K^T starts before V has landed). The consumers release
// K and V apart on their "empty" mbarriers (K once S = Q K^T has completed, V once P V has), so
// under overlap K of tile j + kStages loads once S of tile j is done, while P V of tile j - 1
// still reads V.
// Warpgroups 1..kConsumers are consumers, 64 query rows each: S = Q K^T with wgmma from
// shared memory (both operands K-major), score modifiers and masks (the generator's ScoreMod),
// online softmax in fp32 in the exp2 domain, then O += P V with wgmma taking P from registers (the
// S accumulators repacked, no trip through shared memory) and V as an MN-major operand. The
// consumers run independently, so one warpgroup's softmax overlaps the other's wgmma; with
// kOverlap each consumer also overlaps its own softmax of tile j with its P V of tile j-1, and with
// kPingPong the two consumers take turns issuing wgmma (named barriers). kLazyRescale: a row's
// running max moves only by more than 2^8 (exp2 domain), and O's rescale is skipped by warps whose
// rows all kept theirs.
//
// kPersistent: one CTA per SM walks tiles blockIdx.x, blockIdx.x + gridDim.x, ... (query blocks
// of every (batch, head)); the producer loads the next tile's Q and K/V while the consumers finish
// the current tile's last P V and write its O, so a tile's prologue and epilogue leave the tensor
// cores busy.
//
// A tileable bias (kBiasTma) travels like K: the producer loads each stage's (BLOCK_M, BLOCK_N)
// bias tile by TMA on K's barrier, and the ScoreMod's staged hook reads column pairs of it from
// the swizzled panels (conflict-free); other biases are read per element from global memory.
//
// Shared-memory tiles are panels of kSwizzle-byte rows (kSwizzle / 2 columns per panel, one TMA
// box each), swizzled by the TMA unit exactly as wgmma's descriptors expect; head dims are padded
// to 16 in shared memory only (TMA zero-fills the columns past the real head dim).
//
// Expects, from the generator: JITATTN_BF16, JITATTN_KERNEL_NAME, namespace cfg with the
// compile-time constants, struct ScoreMod, and wgmma_s / wgmma_o (the two wgmma shapes).

namespace jitattn_kernel {

using namespace cfg;

constexpr int kThreads = 128 * (kConsumers + 1);
// Register split after setmaxnreg (65536 per SM, one CTA): the producer keeps the minimum, the
// consumers take the rest (2 consumers: 128 x 24 + 256 x 240 = 64512; 3: 128 x 32 + 384 x 160).
constexpr int kProducerRegs = kConsumers == 3 ? 32 : 24;
constexpr int kConsumerRegs = kConsumers == 3 ? 160 : 240;
constexpr int kPanelColsQK = kSwizzleQK / 2;  // elements per panel row
constexpr int kPanelColsV = kSwizzleV / 2;
constexpr int kPanelsQK = kHeadDimPad / kPanelColsQK;
constexpr int kPanelsV = kHeadDimVPad / kPanelColsV;
__host__ __device__ constexpr int panel_bytes(int rows, int swizzle) {
  return (rows * swizzle + 1023) / 1024 * 1024;  // each panel on a 1 KiB boundary
}
constexpr int kQPanelBytes = panel_bytes(kBlockM, kSwizzleQK);  // (BLOCK_M, PANEL_COLS_QK)
constexpr int kKPanelBytes = panel_bytes(kBlockN, kSwizzleQK);  // (BLOCK_N, PANEL_COLS_QK)
constexpr int kVPanelBytes = panel_bytes(kBlockN, kSwizzleV);   // (BLOCK_N, PANEL_COLS_V)
constexpr int kQBytes = kPanelsQK * kQPanelBytes;
constexpr int kKStageBytes = kPanelsQK * kKPanelBytes;
constexpr int kVStageBytes = kPanelsV * kVPanelBytes;
constexpr int kBiasPanels = kBiasTma ? kBlockN / kBiasPanelCols : 0;
constexpr int kBiasStageBytes = kBiasPanels * kBiasPanelBytes;  // (BLOCK_M, BLOCK_N) bias tile
// Bytes each TMA transaction delivers (full boxes, zero-filled parts included).
constexpr u32 kQTxBytes = kPanelsQK * kBlockM * kSwizzleQK;
constexpr u32 kKTxBytes = kPanelsQK * kBlockN * kSwizzleQK;
constexpr u32 kVTxBytes = kPanelsV * kBlockN * kSwizzleV;
constexpr u32 kBiasTxBytes = kBiasPanels * kBlockM * kSwizzleB;
constexpr int kSNRegs = kBlockN / 2;      // S accumulator floats per thread (64 x BLOCK_N / 128)
constexpr int kONRegs = kHeadDimVPad / 2;  // O accumulator floats per thread
constexpr int kNT = kBlockN / 8;           // n8 column groups of S
constexpr int kDT = kHeadDimVPad / 8;      // n8 column groups of O

static_assert(kConsumers >= 1 && kConsumers <= 3, "1 to 3 consumer warpgroups");
static_assert(kBlockM == 64 * kConsumers, "block_m must be 64 rows per consumer warpgroup");
static_assert(kBlockN % 16 == 0 && kBlockN <= 256, "block_n: multiple of 16 up to 256 (wgmma N)");
static_assert(!kPingPong || (kOverlap && kConsumers == 2), "ping-pong needs overlap and 2 consumers");
static_assert(!kOverlap || kStages >= 2, "overlap needs 2+ stages");
static_assert(kHeadDimPad % 16 == 0 && kHeadDimVPad % 16 == 0, "padded head dims: multiples of 16");
static_assert(kHeadDimPad % kPanelColsQK == 0 && kHeadDimVPad % kPanelColsV == 0,
              "padded head dims must be whole panels");
static_assert(!kBiasTma || kBlockN % kBiasPanelCols == 0, "bias panels must tile block_n");
static_assert(kQBytes + kStages * (kKStageBytes + kVStageBytes + kBiasStageBytes) + 1024 +
                      8 * (6 + 4 * kStages) + 8 ==
                  kSmemBytes,
              "shared-memory layout disagrees with the generator's shared_memory_bytes");

// Q descriptor of k16 step ks for the consumer warpgroup whose rows start `row0` rows in.
JITATTN_DEVICE u64 desc_q(u32 sq, int row0, int ks) {
  const int col = ks * 16;
  return make_smem_desc<kSwizzleQK>(sq + (col / kPanelColsQK) * kQPanelBytes + row0 * kSwizzleQK +
                                        (col % kPanelColsQK) * 2,
                                    16);
}
// K (as B of S = Q K^T, K-major: head dim contiguous) for k16 step ks.
JITATTN_DEVICE u64 desc_k(u32 sk, int ks) {
  const int col = ks * 16;
  return make_smem_desc<kSwizzleQK>(sk + (col / kPanelColsQK) * kKPanelBytes + (col % kPanelColsQK) * 2, 16);
}
// V (as B of O += P V, MN-major: head dim contiguous) for keys kk*16 .. kk*16+15; the leading
// byte offset steps across head-dim panels.
JITATTN_DEVICE u64 desc_v(u32 sv, int kk) {
  return make_smem_desc<kSwizzleV>(sv + kk * 16 * kSwizzleV, kVPanelBytes);
}

}  // namespace jitattn_kernel

// The work of one tile (a query block of one (batch, head)): its sequence extents, the rows it
// writes and the key blocks it can see. Producer and consumers derive it alike.
namespace jitattn_kernel {

struct TileWork {
  int m_block, h, b;
  int len_q, len_k;
  int row_q0, row_k0;  // first row of this batch along the seq dim (packed varlen)
  int m0;              // first query row of the block
  int rows_out;        // rows to write (padded batches also zero their rows in [len_q, seqlen_q))
  int offset;          // causal alignment: len_k - len_q bottom-right, else 0
  int nb_begin, nb_end;
  int kvh, tma_b;
  // Rows to write but nothing to compute: every row fully masked (output 0, LSE -inf).
  JITATTN_DEVICE bool empty() const { return m0 >= len_q || nb_end <= nb_begin; }
};

// The tile at query-block index m_idx (longest first when causal) of head h_idx, batch b_idx.
JITATTN_DEVICE TileWork plan_tile(const AttnFwdParams& p, unsigned m_idx, unsigned h_idx, unsigned b_idx,
                                  unsigned tiles_m) {
  TileWork w;
  w.m_block = kCausal ? static_cast<int>(tiles_m - 1 - m_idx) : static_cast<int>(m_idx);
  w.h = h_idx;
  w.b = b_idx;
  w.len_q = p.seqlen_q;
  w.len_k = p.seqlen_k;
  w.row_q0 = 0;
  w.row_k0 = 0;
  if (kPacked) {
    w.row_q0 = p.cu_seqlens_q[w.b];
    w.row_k0 = p.cu_seqlens_k[w.b];
    w.len_q = p.cu_seqlens_q[w.b + 1] - w.row_q0;
    w.len_k = p.cu_seqlens_k[w.b + 1] - w.row_k0;
  }
  if (kPadded) {
    if (p.seqused_q) w.len_q = min(p.seqused_q[w.b], p.seqlen_q);
    if (p.seqused_k) w.len_k = min(p.seqused_k[w.b], p.seqlen_k);
  }
  w.m0 = w.m_block * kBlockM;
  w.rows_out = min(kBlockM, (kPadded ? p.seqlen_q : w.len_q) - w.m0);
  w.kvh = w.h / p.group;
  // TMA coordinates: packed sequences sit in batch 0 of the maps, from their first row on. Rows of
  // a tile past the sequence belong to the next one (or are zero-filled past the tensor): masked
  // keys, and query rows that are never written.
  w.tma_b = kPacked ? 0 : w.b;
  // Key blocks this query block can see (masks skip empty tiles).
  w.offset = kBottomRight ? w.len_k - w.len_q : 0;
  const int m_last = min(w.m0 + kBlockM, w.len_q) - 1;
  int n_end = w.len_k;
  int n_begin = 0;
  if (kCausal) n_end = min(n_end, m_last + w.offset + 1);
  if (kWindow && p.window_right >= 0) n_end = min(n_end, m_last + w.offset + p.window_right + 1);
  if (kWindow && p.window_left >= 0) n_begin = max(0, w.m0 + w.offset - p.window_left);
  w.nb_begin = n_begin / kBlockN;
  w.nb_end = (max(n_end, 0) + kBlockN - 1) / kBlockN;
  return w;
}

// Tile `linear` of the launch grid (one tile per CTA). Query blocks vary fastest (CTAs running
// together share K and V in L2); with a bias tile by TMA the batch varies fastest instead, so the
// CTAs that share a batch-broadcast bias tile ([1, h, sq, sk], the common relative-position
// layout) run together and read it once from DRAM, then from L2.
JITATTN_DEVICE TileWork grid_tile(const AttnFwdParams& p, unsigned linear) {
  const unsigned tm = gridDim.x, th = gridDim.y, tb = gridDim.z;
  if constexpr (kBiasTma) {
    return plan_tile(p, (linear / tb) % tm, linear / (tb * tm), linear % tb, tm);
  } else {
    return plan_tile(p, linear % tm, (linear / tm) % th, linear / (tm * th), tm);
  }
}

// Tile `linear` of a persistent kernel's order, and of a causal grid's: (head, batch) pairs in
// groups of tiles_group whose K and V fit in L2; within a group the query blocks (longest first
// when causal), each for every pair of the group (heads fastest, so GQA heads sharing K and V run
// together; batch fastest with a bias tile by TMA). Tiles of similar length run together, which
// with the dynamic claims below (or the launch order's, one tile per CTA) balances causal work
// across SMs: a group's longest tiles start together and its shortest fill in behind them.
JITATTN_DEVICE TileWork persistent_tile(const AttnFwdTmaParams& params, unsigned linear) {
  const unsigned tm = params.tiles_m, th = params.tiles_h, tb = params.tiles_b;
  const GroupedTile g = grouped_tile(linear, tm, th * tb, params.tiles_group);
  if constexpr (kBiasTma) {
    return plan_tile(params.p, g.tile, g.pair / tb, g.pair % tb, tm);
  } else {
    return plan_tile(params.p, g.tile, g.pair % th, g.pair / th, tm);
  }
}

// A persistent CTA's next tile: gridDim.x + a ticket of the launch's counter (tickets at or past
// n_work - gridDim.x say stop, one per CTA). The CTA drawing the last ticket (n_work - 1) resets
// the counter for the next launch on the stream: every other ticket was drawn before it.
JITATTN_DEVICE unsigned claim_tile(unsigned* counter, unsigned n_work) {
  const unsigned ticket = atomicAdd(counter, 1u);
  if (ticket == n_work - 1) atomicExch(counter, 0u);
  return gridDim.x + ticket;
}

// Calls body(TileWork) for each of this CTA's tiles: its own (the grid is the tile grid), or,
// persistent, the tiles it claims. The producer thread claims its next tile once it has issued
// every load of the current one (greedy: the SM that frees up first takes the next tile) and
// hands the indices to the consumers through two shared-memory slots (full / empty mbarriers per
// slot), ending with a stop index that both sides see.
struct TileQueue {
  u32 bar_full, bar_empty, slots;  // 2 mbarriers each, 2 u32 slots
};
template <bool kProducer, class Body>
JITATTN_DEVICE void for_each_tile(const AttnFwdTmaParams& params, const TileQueue& q, Body&& body) {
  if constexpr (!kPersistent) {
    const unsigned linear = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    // Causal: the grid's pairs in groups (the host's causal_pair_group, at least 1).
    body(kCausal && !kBiasTma ? persistent_tile(params, linear) : grid_tile(params.p, linear));
  } else {
    const unsigned n_work = params.tiles_m * params.tiles_h * params.tiles_b;
    unsigned t = blockIdx.x;  // the host launches at most n_work CTAs
    for (u32 u = 0;; ++u) {
      const u32 j = u & 1u;
      if (kProducer) {
        if (u >= 2) mbar_wait(q.bar_empty + 8 * j, ((u >> 1) - 1) & 1u);
        st_shared_u32(q.slots + 4 * j, t);
        mbar_arrive(q.bar_full + 8 * j);
      } else {
        mbar_wait(q.bar_full + 8 * j, (u >> 1) & 1u);
        t = ld_shared_u32(q.slots + 4 * j);
        mbar_arrive(q.bar_empty + 8 * j);
      }
      if (t >= n_work) break;
      body(persistent_tile(params, t));
      if (kProducer) t = claim_tile(params.tile_counter, n_work);
    }
  }
}

}  // namespace jitattn_kernel

// At global scope so that the extern "C" symbol is also the NVRTC name expression.
extern "C" __global__ void __launch_bounds__(jitattn_kernel::kThreads, 1)
    JITATTN_KERNEL_NAME(const __grid_constant__ jitattn_kernel::AttnFwdTmaParams params) {
  using namespace jitattn_kernel;
  const AttnFwdParams& p = params.p;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  const int tid = threadIdx.x;

  // ---- shared memory: Q, the K and V rings, the bias tiles, then the mbarriers -----------------
  const u32 base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const u32 sQ = base;
  const u32 sK = sQ + kQBytes;                       // kStages x (BLOCK_N, HEAD_DIM_PAD) panels
  const u32 sV = sK + kStages * kKStageBytes;        // kStages x (BLOCK_N, HEAD_DIM_V_PAD) panels
  const u32 sB = sV + kStages * kVStageBytes;        // kStages x (BLOCK_M, BLOCK_N) bias panels
  const u32 bar_q = sB + kStages * kBiasStageBytes;  // Q landed
  const u32 bar_q_empty = bar_q + 8;                 // persistent: every consumer is done with Q
  const TileQueue tiles{bar_q_empty + 8, bar_q_empty + 24, bar_q_empty + 40 + 32 * kStages};
  const u32 bar_full_k = bar_q_empty + 40;           // kStages each
  const u32 bar_full_v = bar_full_k + 8 * kStages;
  const u32 bar_empty_k = bar_full_v + 8 * kStages;  // K (and the bias tile) read
  const u32 bar_empty_v = bar_empty_k + 8 * kStages;  // V read

  if (tid == 0) {
    mbar_init(bar_q, 1);
    mbar_init(bar_q_empty, 128 * kConsumers);
    for (int j = 0; j < 2; ++j) {
      mbar_init(tiles.bar_full + 8 * j, 1);
      mbar_init(tiles.bar_empty + 8 * j, 128 * kConsumers + 1);  // the consumers and the V thread
    }
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

  // Tiles (for_each_tile): one per CTA, or, persistent, one CTA per SM walking them. The K/V
  // ring and the Q barrier run on across a CTA's tiles: kv_base counts the key tiles loaded so
  // far, q_count the tiles with work. The producer loads a tile's Q once every consumer has
  // finished the previous tile's last S = Q K^T, so the next tile's loads run under this one's
  // last P V and epilogue.
  auto stage_of = [](int i) { return i % kStages; };
  auto phase_of = [](int i) { return static_cast<u32>(i / kStages) & 1u; };

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    // ---- producer: one thread loads Q and K (and bias tiles), another V --------------------------
    setmaxnreg_dec<kProducerRegs>();
    if (tid == 0) {
      int kv_base = 0;
      int q_count = 0;
      for_each_tile<true>(params, tiles, [&](const TileWork& w) {
        if (w.rows_out <= 0 || w.empty()) return;
        if (q_count == 0) {
          // Only with work: a problem without keys has no K/V maps (the driver refuses to encode
          // an empty tensor), and then every tile is empty.
          tma_prefetch_descriptor(&params.tma_k);
          if constexpr (kBiasTma) tma_prefetch_descriptor(&params.tma_bias);
        }
        if (kPersistent && q_count > 0) mbar_wait(bar_q_empty, static_cast<u32>(q_count - 1) & 1u);
        ++q_count;
        mbar_arrive_expect_tx(bar_q, kQTxBytes);
#pragma unroll
        for (int pnl = 0; pnl < kPanelsQK; ++pnl) {
          tma_load_4d(sQ + pnl * kQPanelBytes, &params.tma_q, bar_q, pnl * kPanelColsQK, w.row_q0 + w.m0, w.h,
                      w.tma_b);
        }
        const int n_tiles = w.nb_end - w.nb_begin;
        for (int it = 0; it < n_tiles; ++it) {
          const int s = stage_of(kv_base + it);
          if (kv_base + it >= kStages) mbar_wait(bar_empty_k + 8 * s, phase_of(kv_base + it) ^ 1u);  // K slot free
          const int n0 = (w.nb_begin + it) * kBlockN;
          // The bias tile completes on K's barrier: the softmax that reads it follows S = Q K^T.
          mbar_arrive_expect_tx(bar_full_k + 8 * s, kKTxBytes + kBiasTxBytes);
#pragma unroll
          for (int pnl = 0; pnl < kPanelsQK; ++pnl) {
            tma_load_4d(sK + s * kKStageBytes + pnl * kKPanelBytes, &params.tma_k, bar_full_k + 8 * s,
                        pnl * kPanelColsQK, w.row_k0 + n0, w.kvh, w.tma_b);
          }
          if constexpr (kBiasTma) {
            // Bias rows and columns are positions within the sequence (packed varlen too);
            // broadcast dims have size 1 in the map, coordinate 0.
            const int bias_h = p.bias_head_stride != 0 ? w.h : 0;
            const int bias_b = p.bias_batch_stride != 0 ? w.b : 0;
#pragma unroll
            for (int pnl = 0; pnl < kBiasPanels; ++pnl) {
              tma_load_4d(sB + s * kBiasStageBytes + pnl * kBiasPanelBytes, &params.tma_bias,
                          bar_full_k + 8 * s, n0 + pnl * kBiasPanelCols, w.m0, bias_h, bias_b);
            }
          }
        }
        kv_base += n_tiles;
      });
    } else if (tid == 32) {
      // V by a second thread (warp 1), so neither thread's loop outgrows the producer's 24
      // registers: it follows the same tiles (reading the persistent queue like a consumer) and
      // waits on V's own empty barriers.
      int kv_base = 0;
      for_each_tile<false>(params, tiles, [&](const TileWork& w) {
        if (w.rows_out <= 0 || w.empty()) return;
        if (kv_base == 0) tma_prefetch_descriptor(&params.tma_v);
        // Few live values (the loop runs in 24 registers): the ring count, its end, the key row.
        const int end = kv_base + w.nb_end - w.nb_begin;
        for (int row = w.row_k0 + w.nb_begin * kBlockN; kv_base < end; ++kv_base, row += kBlockN) {
          const int s = stage_of(kv_base);
          if (kv_base >= kStages) mbar_wait(bar_empty_v + 8 * s, phase_of(kv_base) ^ 1u);  // V slot free
          mbar_arrive_expect_tx(bar_full_v + 8 * s, kVTxBytes);
#pragma unroll
          for (int pnl = 0; pnl < kPanelsV; ++pnl) {
            tma_load_4d(sV + s * kVStageBytes + pnl * kVPanelBytes, &params.tma_v, bar_full_v + 8 * s,
                        pnl * kPanelColsV, row, w.kvh, w.tma_b);
          }
        }
      });
    }
  } else {
    // ---- consumers: 64 query rows per warpgroup --------------------------------------------------
    setmaxnreg_inc<kConsumerRegs>();
    const int wg = warpgroup - 1;
    const int wtid = tid % 128;
    const int warp = wtid / 32;  // 16 rows per warp
    const int lane = tid % 32;
    const int g = lane / 4;      // row within the warp's 16 (and +8)
    const int t = lane % 4;      // column pair within an n8 group
    const int row0 = wg * 64;    // first row of this warpgroup within the block
    int kv_base = 0;
    int q_count = 0;

    for_each_tile<false>(params, tiles, [&](const TileWork& w) {
      if (w.rows_out <= 0) return;
      const int b = w.b, h = w.h, m0 = w.m0, len_q = w.len_q, len_k = w.len_k, offset = w.offset;
      const int rows_out = w.rows_out, nb_begin = w.nb_begin;
      const long long ob = kPacked ? 0 : static_cast<long long>(b);
      elem_t* gO = static_cast<elem_t*>(p.o) + ob * p.o_batch_stride + (w.row_q0 + m0) * p.o_row_stride +
                   h * p.o_head_stride;
      float* gLse = kLse ? p.lse + b * p.lse_batch_stride + h * p.lse_head_stride + w.row_q0 + m0 : nullptr;
      if (w.empty()) {
        // Every row fully masked: output 0, LSE -inf (the consumer threads; no barrier involved).
        const int ctid = tid - 128;
        for (int i = ctid; i < rows_out * (kHeadDimV / 2); i += 128 * kConsumers) {
          const int r = i / (kHeadDimV / 2);
          const int c = i % (kHeadDimV / 2);
          *reinterpret_cast<u32*>(gO + r * p.o_row_stride + 2 * c) = 0u;
        }
        if (kLse) {
          for (int r = ctid; r < rows_out; r += 128 * kConsumers) gLse[r] = neg_inf();
        }
        return;
      }
      const int n_tiles = w.nb_end - w.nb_begin;
      const int wm0 = m0 + row0;   // first query row of this warpgroup

      ScoreMod mod;
      mod.init(p, b, h, len_q, len_k, offset, m0);

      float acc_o[kONRegs];  // (64, HEAD_DIM_V_PAD) per warpgroup
      float row_max[2];      // rows g and g+8 of this warp; raw scores or log2 domain (kRawScores)
      float row_sum[2];      // per-thread partial sums, reduced at the end
#pragma unroll
      for (int i = 0; i < kONRegs; ++i) acc_o[i] = 0.0f;
      row_max[0] = row_max[1] = neg_inf();
      row_sum[0] = row_sum[1] = 0.0f;

      // Scores of one tile in acc_s -> probabilities in place; correction of the running max.
      auto softmax_tile = [&](float (&acc_s)[kSNRegs], int n0, int stage, float (&correction)[2]) {
        // ---- score modifiers and masks ---------------------------------------------------------
        if constexpr (!kRawScores) {
          mod.begin_tile_smem(sB + stage * kBiasStageBytes, n0);
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int qi = wm0 + warp * 16 + g + (e / 2) * 8;
              const int kj = n0 + nt * 8 + 2 * t + (e % 2);
              acc_s[4 * nt + e] = mod.apply(acc_s[4 * nt + e], qi, kj);
            }
          }
          // Modifiers with a staged shared-memory tile (a bias by TMA): one read per column pair.
          if constexpr (ScoreMod::kStaged) {
#pragma unroll
            for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
              for (int hf = 0; hf < 2; ++hf) {  // columns 2t, 2t+1 of rows g and g+8
                const int qi = wm0 + warp * 16 + g + hf * 8;
                mod.apply_staged(acc_s[4 * nt + 2 * hf], acc_s[4 * nt + 2 * hf + 1], qi, n0 + nt * 8 + 2 * t);
              }
            }
          }
        }
        // Per-warpgroup decision: only tiles crossing the sequence end or a mask boundary of this
        // warpgroup's 64 rows evaluate the mask per element.
        const int wm_last = wm0 + 63;
        bool need_mask = n0 + kBlockN > len_k;
        if (kCausal) need_mask |= n0 + kBlockN - 1 > wm0 + offset;
        if (kWindow && p.window_right >= 0) need_mask |= n0 + kBlockN - 1 > wm0 + offset + p.window_right;
        if (kWindow && p.window_left >= 0) need_mask |= n0 < wm_last + offset - p.window_left;
        if (need_mask) {
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int qi = wm0 + warp * 16 + g + (e / 2) * 8;
              const int kj = n0 + nt * 8 + 2 * t + (e % 2);
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
        // ---- online softmax (exp2 domain; scale folded into one FMA when kRawScores) -------------
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          float mx = row_max[hf];
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(acc_s[4 * nt + 2 * hf], acc_s[4 * nt + 2 * hf + 1]));
          mx = quad_max(mx);
          if constexpr (kLazyRescale) mx = lazy_row_max(mx, row_max[hf], kExpScale);
          // A row with no visible key so far keeps max -inf; use 0 so exp2 sees -inf, not NaN.
          const float m_use = (mx == neg_inf()) ? 0.0f : mx;
          const float m_scaled = m_use * kExpScale;
          correction[hf] = fast_exp2(row_max[hf] * kExpScale - m_scaled);
          row_max[hf] = mx;
          float sum[2] = {0.0f, 0.0f};  // two chains
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) {
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float x = fmaf(acc_s[4 * nt + 2 * hf + e], kExpScale, -m_scaled);
              // kPolyExp: every fourth n8 group on the FMA pipe, balancing it against MUFU.
              const float pe = (kPolyExp && nt % 4 == 3) ? exp2_poly(x) : fast_exp2(x);
              acc_s[4 * nt + 2 * hf + e] = pe;
              sum[e] += pe;
            }
          }
          row_sum[hf] = row_sum[hf] * correction[hf] + (sum[0] + sum[1]);
        }
        if constexpr (kDropout) {
          // Dropout after the row sums (the LSE is of the probabilities before dropout; 1 / (1 - p)
          // in the epilogue), with templates/philox.h's keep bits: a call gives 4 adjacent keys of
          // one query, and the 4 lanes of a row pair (same g, t = 0..3) hold 2 rows x 2 key quads
          // per n8 group. Lane t makes the call of row g + 8 (t / 2), quad t % 2, and the 4 trade
          // their 4-bit results by shuffles, so every word is drawn once. One call's state live at
          // a time (its key passes through asm beside the bits so far).
          const unsigned bh = static_cast<unsigned>(b * p.heads_q + h);
          const unsigned row = static_cast<unsigned>(wm0 + warp * 16 + g + 8 * (t / 2));
          const int quad_lane = lane & ~3;
#pragma unroll
          for (int w8 = 0; w8 < (kNT + 7) / 8; ++w8) {
            u32 mine = 0;
#pragma unroll
            for (int j = 0; j < 8 && 8 * w8 + j < kNT; ++j) {
              unsigned col = static_cast<unsigned>(n0 + (8 * w8 + j) * 8 + 4 * (t % 2));
              asm volatile("" : "+r"(col) : "r"(mine));
              mine |= dropout_keep4(p.dropout_seed, p.dropout_offset, bh, row, col, p.dropout_threshold) << (4 * j);
            }
            // Element (hf, e) of n8 group j: bit 2 (t % 2) + e of the nibble of lane 2 hf + t / 2.
            u32 bits = 0;
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
              const u32 other = __shfl_sync(0xffffffffu, mine, quad_lane + 2 * hf + t / 2);
              bits |= ((other >> (2 * (t % 2))) & 0x33333333u) << (2 * hf);
            }
#pragma unroll
            for (int j = 0; j < 8 && 8 * w8 + j < kNT; ++j) {
#pragma unroll
              for (int e = 0; e < 4; ++e) {
                if (((bits >> (4 * j + e)) & 1u) == 0u) acc_s[4 * (8 * w8 + j) + e] = 0.0f;
              }
            }
          }
        }
      };
      auto rescale_o = [&](const float (&correction)[2]) {
        // kLazyRescale: most tiles leave every row's max where it was; the warp skips them.
        if constexpr (kLazyRescale) {
          if (!warp_rescales(correction)) return;
        }
#pragma unroll
        for (int d = 0; d < kDT; ++d) {
          acc_o[4 * d + 0] *= correction[0];
          acc_o[4 * d + 1] *= correction[0];
          acc_o[4 * d + 2] *= correction[1];
          acc_o[4 * d + 3] *= correction[1];
        }
      };
      // P as wgmma A fragments: the S accumulator layout is wgmma's A-fragment layout, so each k16
      // step of P V takes two n8 groups of S, packed to 16-bit pairs.
      auto pack_p = [&](const float (&acc_s)[kSNRegs], u32 (&pa)[kBlockN / 16][4]) {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          pa[kk][0] = pack2(acc_s[8 * kk + 0], acc_s[8 * kk + 1]);
          pa[kk][1] = pack2(acc_s[8 * kk + 2], acc_s[8 * kk + 3]);
          pa[kk][2] = pack2(acc_s[8 * kk + 4], acc_s[8 * kk + 5]);
          pa[kk][3] = pack2(acc_s[8 * kk + 6], acc_s[8 * kk + 7]);
        }
      };
      auto issue_s = [&](float (&acc_s)[kSNRegs], int s) {  // S = Q K^T, committed, not waited
#pragma unroll
        for (int ks = 0; ks < kHeadDimPad / 16; ++ks) {
          wgmma_s(acc_s, desc_q(sQ, row0, ks), desc_k(sK + s * kKStageBytes, ks), ks > 0 ? 1 : 0);
        }
        wgmma_commit();
      };
      auto issue_pv = [&](u32 (&pa)[kBlockN / 16][4], int s) {  // O += P V, committed, not waited
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) {
          wgmma_o(acc_o, pa[kk], desc_v(sV + s * kVStageBytes, kk));
        }
        wgmma_commit();
      };
      auto fence_p = [&](u32 (&pa)[kBlockN / 16][4]) {
#pragma unroll
        for (int kk = 0; kk < kBlockN / 16; ++kk) fence_regs(pa[kk]);
      };
      // Ping-pong (2 consumers): warpgroup w issues its wgmma batch after bar.sync on barrier 1+w,
      // then bar.arrive's the other's barrier, so the two alternate on the tensor cores and one's
      // softmax runs under the other's wgmma. Per tile, consumer 1 starts by giving consumer 0 the
      // first turn and skips its last hand-over, so arrivals and syncs match exactly (consumer 1's
      // next first hand-over comes after consumer 0's last sync of this tile).
      int turns_left = n_tiles + 1;  // issue points: S of tile 0, n_tiles - 1 overlapped, last P V
      auto my_turn = [&] {
        if constexpr (kPingPong) named_bar_sync(1 + wg, 256);
      };
      auto pass_turn = [&] {
        if constexpr (kPingPong) {
          --turns_left;
          if (wg == 0 || turns_left > 0) named_bar_arrive(2 - wg, 256);
        }
      };
      if constexpr (kPingPong) {
        if (wg == 1) named_bar_arrive(1, 256);
      }
      // Persistent: this thread is done with Q once the tile's last S = Q K^T has completed.
      auto release_q = [&] {
        if constexpr (kPersistent) mbar_arrive(bar_q_empty);
      };
      // This thread is done with stage s's K once its S = Q K^T has completed; a bias tile by TMA
      // shares K's slot and barriers and is read by the softmax, so then only after it.
      auto release_k = [&](int s, bool after_softmax) {
        if (after_softmax == kBiasTma) mbar_arrive(bar_empty_k + 8 * s);
      };

      mbar_wait(bar_q, static_cast<u32>(q_count) & 1u);
      ++q_count;
      if constexpr (!kOverlap) {
        // Serial schedule: S, softmax, P V, each wgmma batch waited on before its result is used.
        for (int it = 0; it < n_tiles; ++it) {
          const int s = stage_of(kv_base + it);
          float acc_s[kSNRegs];  // (64, BLOCK_N) per warpgroup
          mbar_wait(bar_full_k + 8 * s, phase_of(kv_base + it));
          fence_regs(acc_s);
          wgmma_fence();
          issue_s(acc_s, s);
          wgmma_wait<0>();
          fence_regs(acc_s);
          if (it == n_tiles - 1) release_q();
          release_k(s, false);
          float correction[2];
          softmax_tile(acc_s, (nb_begin + it) * kBlockN, s, correction);
          release_k(s, true);
          rescale_o(correction);
          u32 pa[kBlockN / 16][4];  // (64, 16) A fragments of P per k16 step
          pack_p(acc_s, pa);
          mbar_wait(bar_full_v + 8 * s, phase_of(kv_base + it));
          fence_regs(acc_o);
          wgmma_fence();
          issue_pv(pa, s);
          wgmma_wait<0>();
          fence_regs(acc_o);
          fence_p(pa);
          mbar_arrive(bar_empty_v + 8 * s);  // this thread is done with stage s's V
        }
      } else {
        // Intra-warpgroup overlap: S of tile it and P V of tile it-1 are issued back to back; the
        // softmax of tile it runs while P V computes. Holds S, P and O at once.
        float acc_s[kSNRegs];      // (64, BLOCK_N) per warpgroup
        u32 pa[kBlockN / 16][4];   // P of the previous tile
        float correction[2];
        const int s0 = stage_of(kv_base);
        mbar_wait(bar_full_k + 8 * s0, phase_of(kv_base));
        fence_regs(acc_s);
        my_turn();
        wgmma_fence();
        issue_s(acc_s, s0);
        pass_turn();
        wgmma_wait<0>();
        fence_regs(acc_s);
        if (n_tiles == 1) release_q();
        release_k(s0, false);
        softmax_tile(acc_s, nb_begin * kBlockN, s0, correction);  // O is 0: no rescale
        release_k(s0, true);
        pack_p(acc_s, pa);
        for (int it = 1; it < n_tiles; ++it) {
          const int s = stage_of(kv_base + it);
          const int sp = stage_of(kv_base + it - 1);
          // Both waits before the fence: the two batches issue back to back in one basic block
          // (V of tile it-1 landed with or before K of tile it).
          mbar_wait(bar_full_v + 8 * sp, phase_of(kv_base + it - 1));
          mbar_wait(bar_full_k + 8 * s, phase_of(kv_base + it));
          fence_regs(acc_s);
          fence_regs(acc_o);
          fence_p(pa);
          my_turn();
          wgmma_fence();
          issue_s(acc_s, s);
          issue_pv(pa, sp);
          pass_turn();
          wgmma_wait<1>();  // S of tile it is done; P V of tile it-1 may still run
          fence_regs(acc_s);
          if (it == n_tiles - 1) release_q();
          release_k(s, false);
          softmax_tile(acc_s, (nb_begin + it) * kBlockN, s, correction);
          release_k(s, true);
          wgmma_wait<0>();
          fence_regs(acc_o);
          fence_p(pa);
          mbar_arrive(bar_empty_v + 8 * sp);  // this thread is done with stage sp's V
          rescale_o(correction);
          pack_p(acc_s, pa);
        }
        const int sl = stage_of(kv_base + n_tiles - 1);
        mbar_wait(bar_full_v + 8 * sl, phase_of(kv_base + n_tiles - 1));
        fence_regs(acc_o);
        fence_p(pa);
        my_turn();
        wgmma_fence();
        issue_pv(pa, sl);
        pass_turn();
        wgmma_wait<0>();
        fence_regs(acc_o);
        fence_p(pa);
        mbar_arrive(bar_empty_v + 8 * sl);
      }
      kv_base += n_tiles;

      // ---- epilogue: normalise, write O (and LSE) ------------------------------------------------
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float sum = quad_sum(row_sum[hf]);
        const int r = row0 + warp * 16 + g + hf * 8;  // row within the block
        const bool real = m0 + r < len_q;              // padded rows past len_q write 0
        float inv = (sum > 0.0f && real) ? 1.0f / sum : 0.0f;
        if constexpr (kDropout) inv *= p.dropout_scale;  // kept probabilities scale by 1 / (1 - p)
        if (r < rows_out) {
          elem_t* o_row = gO + r * p.o_row_stride;
#pragma unroll
          for (int d = 0; d < kDT; ++d) {
            if (kHeadDimVPad == kHeadDimV || d * 8 < kHeadDimV) {
              *reinterpret_cast<u32*>(o_row + d * 8 + 2 * t) =
                  pack2(acc_o[4 * d + 2 * hf] * inv, acc_o[4 * d + 2 * hf + 1] * inv);
            }
          }
          if (kLse && t == 0) {
            gLse[r] = (sum > 0.0f && real) ? (row_max[hf] * kExpScale + __log2f(sum)) * kLn2 : neg_inf();
          }
        }
      }    });
  }
}
