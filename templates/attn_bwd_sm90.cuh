// Backward attention, Hopper family (sm_90a): the dK/dV kernel (dQ added by TMA reduce-add) with wgmma,
// TMA and warp specialisation; the preprocess (delta) and dQ conversion kernels are
// templates/attn_bwd_common.cuh's.
//
// One CTA per (key block of kBlockN = 64 * kConsumers keys, KV head, batch). Warpgroup 0 is the
// producer: thread 0 loads K and V once, then the Q and dO tiles of every query block (of every
// query head of the GQA group) into a kStages-deep ring by TMA; warp 1 stages the blocks' LSE
// (log2 domain; +inf for rows with no key or past the sequence, so their P is 0) and delta. Each
// consumer warpgroup owns 64 keys and keeps their dK and dV in registers; per query block:
//   S^T = K Q^T, dP^T = V dO^T        wgmma, both operands K-major in shared memory
//   P^T = exp2(S^T * scale - LSE), dS^T = P^T (dP^T - delta) * d(score)/d(Q.K)   registers
//                                     (kDropout: dP^T through the kept probabilities, Z dP^T with
//                                     Z = keep / (1 - p), and dV takes P^T Z; the keep bits are
//                                     templates/philox.h's, drawn per block before its products)
//   dV += P^T dO, dK += dS^T Q        wgmma, A from registers (the accumulators repacked),
//                                     B (dO, Q) MN-major in shared memory
//   dQ += dS K                        dS^T to shared memory (double-buffered, 128-byte swizzle),
//                                     wgmma with A transposed (M-major) and K MN-major; the fp32
//                                     product into the warpgroup's shared-memory dQ tile (panels
//                                     of 32 columns, 128-byte swizzle), which one thread adds into
//                                     the fp32 dQ workspace by TMA reduce-add (bulk tensor copies:
//                                     the L2 adds whole lines, the consumers issue no atomics).
//   dBias (kDbias)                    dS^T before d(score)/d(Q.K) (dL/d(score)), from the
//                                     registers by red.global.add.f32 into the fp32 dBias
//                                     workspace (broadcast dims have stride 0: summed there).
// The dQ product is split between the consumers when both see every key of the block (a named
// barrier over them after dS^T is written): by query rows when block_m is 128, else by head-dim
// panels when the padded head dim is two whole panels, else by alternating blocks (kDqAlternate:
// consumer it % 2 computes block it's whole dQ, one block late, so the other's half of dS^T is
// long written; barriers 7/8 tell the other when that dS^T buffer is free again for the block
// after next); the independent consumers of _pp each add their
// own 64 keys' share (kDqAllKeys false, a barrier per warpgroup). A warpgroup's dQ tile is free again
// once its last reduce has read it: the issuing thread waits for that before the dS^T barrier.
// kDeterministic: the reduce-adds into each query block's dQ come in one fixed order of the key
// blocks (so every fp32 sum is formed in the same order, run after run): a counter per (batch,
// query head, query block) in the workspace, which the adding thread waits to reach its rank
// (templates/bwd_order.h dq_rank) before its reduce-adds and bumps once they are done. Ascending
// key blocks, or descending where a causal mask or right window makes the later key blocks reach
// a query block first; the launch order dispatches the key blocks in the same order (cta_coords),
// so a CTA only waits for CTAs that started before it. The waits and adds are a producer warp's
// per consumer (warps 2 and 3, FA3's dQ writer), so the consumers keep their registers and only
// wait for their dQ tile to be free again. Tile w written: its query block and head in a record
// in shared memory, then the consumer's 128 threads arrive on mbarrier dq_full + 8 w, which the
// writer waits on (an mbarrier's release and acquire order the record for racecheck too; a named
// barrier's arrive did not). Tile w read by the reduce-adds: the writer arrives on named barrier
// 11 + w, the consumer syncs there before its next tile's stores. A record with a negative block
// ends the writer.
// kWide (configs _x2, head dims above 128): dK and dV of 64 keys would not fit one warpgroup's
// registers beside S^T and dP^T, so the CTA takes 64 keys (block_n 64, block_m 64) and the two
// consumers split the work by columns (FA3's hdim-256 shape): consumer w computes S^T and dP^T
// for query columns 32 w..32 w + 31 of the block (N = 32), writes P^T (times Z under dropout)
// and dS^T to shared memory, and after the dS^T barrier owns head-dim columns w * d/2.. of dK,
// dV and dQ: dV += P^T dO and dK += dS^T Q with both operands from shared memory (A K-major, B
// MN-major), dQ as the column split above. The head dims are padded to multiples of 64 in
// shared memory (each half whole panels); dQ is issued first, dK and dV behind it, and the dQ
// product is written out while they run. Q and dO have their own full and empty mbarriers
// (kSplitQO): dK (Q's last reader) and dV (dO's) are commit groups of their own, so a stage's Q is
// released while dV runs and the next block's Q loads under it, and its dO loads under the next
// block's S^T (one stage at d256: a block's loads had waited for all of its products; H200, d256
// backward 251 -> 396 TFLOP/s).
// kDqWriter (the generator's choice: deterministic mode, _x2, and in fast mode the default shape
// unless the mask's P^T loop leaves it no registers): the writer warps issue the reduce-adds in
// fast mode too, without the counters. The consumer then waits for its tile's last read just
// before its next stores, not before the dS^T barrier, where it held both consumers (H200, d256
// causal: 304 TFLOP/s with writers against 238 without; d128: 473 -> 489).
// Order of the second batch: dK is issued before the dS^T barrier (the tensor cores run it while
// the consumer waits); with kDqEarly (the register model has room for P^T beside the dQ
// accumulators) the block's dQ consumer issues dQ, then dV, and writes the dQ product out while
// dV runs; otherwise dV goes with dK and dQ is issued once both are done.
//
// Expects, from the generator: JITATTN_BF16, JITATTN_BWD_MAIN, namespace cfg with the
// compile-time constants, struct ScoreMod (with grad_scale), and wgmma_s / wgmma_dv / wgmma_dk /
// wgmma_dq (the four wgmma shapes).

namespace jitattn_kernel {

using namespace cfg;

constexpr int kThreads = 128 * (kConsumers + 1);
constexpr int kProducerRegs = 24;
constexpr int kConsumerRegs = 240;  // 128 x 24 + 256 x 240 = 64512 of 65536 (2 consumers)
constexpr int kPanelColsQK = kSwizzleQK / 2;
constexpr int kPanelColsV = kSwizzleV / 2;
constexpr int kPanelsQK = kHeadDimPad / kPanelColsQK;
constexpr int kPanelsV = kHeadDimVPad / kPanelColsV;
__host__ __device__ constexpr int panel_bytes(int rows, int swizzle) {
  return (rows * swizzle + 1023) / 1024 * 1024;  // each panel on a 1 KiB boundary
}
constexpr int kKPanelBytes = panel_bytes(kBlockN, kSwizzleQK);  // (BLOCK_N, PANEL_COLS_QK)
constexpr int kVPanelBytes = panel_bytes(kBlockN, kSwizzleV);   // (BLOCK_N, PANEL_COLS_V)
constexpr int kQPanelBytes = panel_bytes(kBlockM, kSwizzleQK);  // (BLOCK_M, PANEL_COLS_QK)
constexpr int kOPanelBytes = panel_bytes(kBlockM, kSwizzleV);   // (BLOCK_M, PANEL_COLS_V) of dO
constexpr int kDSPanelBytes = panel_bytes(kBlockN, 128);        // (BLOCK_N, 64 queries) of dS^T
constexpr int kKBytes = kPanelsQK * kKPanelBytes;
constexpr int kVBytes = kPanelsV * kVPanelBytes;
constexpr int kQStageBytes = kPanelsQK * kQPanelBytes;
constexpr int kOStageBytes = kPanelsV * kOPanelBytes;
constexpr int kDSBytes = (kBlockM / 64) * kDSPanelBytes;
constexpr u32 kKVTxBytes = kPanelsQK * kBlockN * kSwizzleQK + kPanelsV * kBlockN * kSwizzleV;
constexpr u32 kQTxBytes = kPanelsQK * kBlockM * kSwizzleQK;
constexpr u32 kOTxBytes = kPanelsV * kBlockM * kSwizzleV;
constexpr int kSCols = kWide ? kBlockM / 2 : kBlockM;  // query columns of a consumer's S^T
constexpr int kSRegs = kSCols / 2;                      // S^T (and dP^T) floats per thread: (64 keys, S_COLS)
constexpr int kMT = kSCols / 8;                         // n8 query groups of S^T
constexpr int kDkCols = kWide ? kHeadDimPad / 2 : kHeadDimPad;     // dK columns per consumer
constexpr int kDvCols = kWide ? kHeadDimVPad / 2 : kHeadDimVPad;   // dV columns per consumer
constexpr int kDKRegs = kDkCols / 2;  // dK floats per thread: (64 keys, DK_COLS)
constexpr int kDVRegs = kDvCols / 2;
constexpr int kPBytes = kWide ? kDSBytes : 0;  // kWide: P^T (64 keys, 64 queries) beside dS^T
constexpr bool kDqWriter = kDqWriterCfg;  // dQ's reduce-adds by the writer warps 2 and 3 (the generator's choice)
static_assert(kDqWriter || (!kDeterministic && !kWide), "deterministic mode and _x2 hand dQ to the writer warps");
constexpr bool kSplitQO = kWide;  // Q and dO each on their own full and empty mbarriers per stage
constexpr int kDqKeys = kDqAllKeys ? kBlockN : 64;    // keys one consumer's dQ product sums over
constexpr int kDqMTiles = kDqSplitM ? 1 : kBlockM / 64;  // 64-row tiles of dQ per consumer
constexpr int kDqPanels = (kDqN + 31) / 32;             // fp32 panels of 32 columns per dQ tile
constexpr int kDqPassN = kDqN / kDqPasses;              // dQ columns per product pass (kWide: 2 at 128)
constexpr int kDqPanelBytes = 64 * 128;                 // (64 rows, 32 fp32 columns)
constexpr int kDqBytes = kDqMTiles * kDqPanels * kDqPanelBytes;  // one consumer's dQ tiles

static_assert(kConsumers == 1 || kConsumers == 2, "1 or 2 consumer warpgroups");
static_assert(kWide || kBlockN == 64 * kConsumers, "block_n must be 64 keys per consumer warpgroup");
static_assert(kDqPasses == 1 || (kWide && kDqPasses == 2 && kDqPassN % 32 == 0),
              "dQ passes: one, or two under kWide, whole fp32 panels each");
static_assert(!kWide || (kConsumers == 2 && kBlockN == 64 && kBlockM == 64 && kDqSplitN && !kTurns &&
                         kDkCols % kPanelColsQK == 0 && kDvCols % kPanelColsV == 0),
              "kWide: two consumers on 64 keys and 64 query rows, each whole panels of the head dims");
static_assert(kBlockM == 64 || kBlockM == 128, "block_m: 64 or 128 query rows per step");
static_assert(kStages >= 1 && kStages <= 4, "stages: 1 to 4");
static_assert(!kTurns || (kConsumers == 2 && !kDqAllKeys), "turns (_pp): 2 independent consumers");
static_assert(!kDqAlternate || (kConsumers == 2 && kDqAllKeys && !kDqSplitM && !kDqSplitN),
              "alternating dQ: two consumers, each the whole product on its blocks");
static_assert(!kDqSplitM || (kDqAllKeys && kBlockM == 64 * kConsumers), "dQ row split: one 64-row tile each");
static_assert(!kDqSplitN || (kDqAllKeys && kDqN * kConsumers == kHeadDimPad && kDqN % kPanelColsQK == 0),
              "dQ column split: whole head-dim panels each");
static_assert(kKBytes + kVBytes + kStages * (kQStageBytes + kOStageBytes) + 2 * kDSBytes + 2 * kPBytes +
                      kConsumers * kDqBytes + 8 * kStages * kBlockM + 1024 + 8 * (1 + 2 * kStages) +
                      (kDqWriter ? 32 : 0) + (kSplitQO ? 16 * kStages : 0) ==
                  kSmemBytes,
              "shared-memory layout disagrees with the generator's shared_memory_bytes");

// K-major operand (rows row0.., head dim contiguous in swizzled panels), k16 step ks.
template <int kSw>
JITATTN_DEVICE u64 desc_kmajor(u32 tile, int panel, int row0, int ks) {
  constexpr int kCols = kSw / 2;
  const int col = ks * 16;
  return make_smem_desc<kSw>(tile + (col / kCols) * panel + row0 * kSw + (col % kCols) * 2, 16);
}
// MN-major operand: its K dim is the tile's rows (from k0), its M or N dim the columns from col0
// (a whole panel); the leading byte offset steps across panels.
template <int kSw>
JITATTN_DEVICE u64 desc_mnmajor(u32 tile, int panel, int k0, int col0) {
  return make_smem_desc<kSw>(tile + (col0 / (kSw / 2)) * panel + k0 * kSw, static_cast<u32>(panel));
}

JITATTN_DEVICE void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
JITATTN_DEVICE void st_shared_v2(u32 addr, float a, float b) {
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(addr), "f"(a), "f"(b) : "memory");
}
// Adds the (32, 64) fp32 box at `src` into the tensor at coordinates (c0, c1, c2, c3): a bulk
// tensor reduce-add, tracked by the issuing thread's bulk groups.
JITATTN_DEVICE void tma_reduce_add_4d(const void* tensor_map, u32 src, int c0, int c1, int c2, int c3) {
  asm volatile(
      "cp.reduce.async.bulk.tensor.4d.global.shared::cta.add.tile.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
          reinterpret_cast<u64>(tensor_map)),
      "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}
// threadIdx.x read anew (no register holds it across the loops).
JITATTN_DEVICE int tid_fresh() {
  int t;
  asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
  return t;
}
// This CTA's key block, KV head and batch: its grid position, or under kCausal with pair_group > 1
// its place in the launch order by groups of pair_group (KV head, batch) pairs: key block 0 of
// each pair of the group, then block 1, ... (the heaviest first), so a group's light blocks fill
// in behind its heavy ones instead of one pair's heavy blocks starting behind another's light
// ones. %ctaid is read anew, so that the epilogue recomputes it rather than hold it in registers
// across the loops.
struct CtaCoords {
  int n_block, hk, b;
};
// This CTA's mask as templates/bwd_order.h takes it (window sides past kWindow unbounded).
JITATTN_DEVICE BwdMask bwd_mask(const AttnFwdParams& p, int len_q, int len_k) {
  return {len_q, len_k, kBottomRight ? len_k - len_q : 0, kCausal, kWindow ? p.window_left : -1,
          kWindow ? p.window_right : -1};
}
// kDeterministic with dq_descending: the key blocks are dispatched last to first.
JITATTN_DEVICE CtaCoords cta_coords(const AttnBwdTmaParams& params) {
  if constexpr (!kCausal && !kDeterministic) {
    return {static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y), static_cast<int>(blockIdx.z)};
  }
  const bool reverse = kDeterministic && dq_descending(bwd_mask(params.p.fwd, 0, 0));
  unsigned x, y, z;
  asm volatile("mov.u32 %0, %%ctaid.x;\n" : "=r"(x));
  asm volatile("mov.u32 %0, %%ctaid.y;\n" : "=r"(y));
  asm volatile("mov.u32 %0, %%ctaid.z;\n" : "=r"(z));
  CtaCoords c{static_cast<int>(x), static_cast<int>(y), static_cast<int>(z)};
  if (params.pair_group > 1) {
    const GroupedTile g =
        grouped_tile(x + gridDim.x * (y + gridDim.y * z), gridDim.x, gridDim.y * gridDim.z, params.pair_group);
    c = {static_cast<int>(g.tile), static_cast<int>(g.pair % gridDim.y), static_cast<int>(g.pair / gridDim.y)};
  }
  if (reverse) c.n_block = static_cast<int>(gridDim.x) - 1 - c.n_block;
  return c;
}
// The deterministic dQ counters: wait (acquire) until *sem reaches target, then bump it (release)
// once this thread's reduce-adds are complete. The async proxy's global writes (the reduce-adds)
// are fenced against the generic proxy's counter on both sides.
// The loop is inside the asm: a C++ loop around the load spilled 4-12 bytes at d104-112 (in the
// consumers, where the wait first ran).
JITATTN_DEVICE void sem_wait_at_least(const int* sem, int target) {
  asm volatile(
      "{\n .reg .pred p;\n .reg .s32 v;\n"
      "SEM_WAIT:\n ld.acquire.gpu.global.s32 v, [%0];\n setp.lt.s32 p, v, %1;\n @p bra SEM_WAIT;\n"
      " fence.proxy.async.global;\n}\n" ::"l"(sem),
      "r"(target)
      : "memory");
}
JITATTN_DEVICE void sem_release_one(int* sem) {
  asm volatile("fence.proxy.async.global;\n" ::: "memory");
  asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(sem) : "memory");
}
JITATTN_DEVICE void bulk_commit() { asm volatile("cp.async.bulk.commit_group;\n" ::: "memory"); }
// Waits until the thread's bulk groups have read their shared-memory sources (kRead) or are done.
template <bool kRead>
JITATTN_DEVICE void bulk_wait_all() {
  if constexpr (kRead) {
    asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
  } else {
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
  }
}
// The reduce-adds of consumer w's dQ tiles (at sdq) into the fp32 workspace, for query rows m0 of
// head h (rows from row_q0 of batch tma_b), in one bulk group. Rows past the sequence carry zeros
// (their P is 0): a batch's are clipped by the map, packed varlen's land on the next sequence's
// rows unchanged (adding +0 changes no sum, in any order); tiles wholly past it are skipped.
// Columns past the head dim are clipped.
JITATTN_DEVICE void dq_reduce_adds(const AttnBwdTmaParams& params, u32 sdq, int w, int m0, int h, int len_q,
                                   int row_q0, int tma_b) {
#pragma unroll
  for (int i = 0; i < kDqMTiles; ++i) {
    const int mt = kDqSplitM ? w : i;
    if (m0 + mt * 64 < len_q) {
#pragma unroll
      for (int pnl = 0; pnl < kDqPanels; ++pnl) {
        tma_reduce_add_4d(&params.tma_dq, sdq + (i * kDqPanels + pnl) * kDqPanelBytes,
                          (kDqSplitN ? w * kDqN : 0) + pnl * 32, row_q0 + m0 + mt * 64, h, tma_b);
      }
    }
  }
  bulk_commit();
}
JITATTN_DEVICE void red_add(float* p, float v) {
  asm volatile("red.global.add.f32 [%0], %1;\n" ::"l"(p), "f"(v) : "memory");
}

}  // namespace jitattn_kernel

extern "C" __global__ void __launch_bounds__(jitattn_kernel::kThreads, 1)
    JITATTN_BWD_MAIN(const __grid_constant__ jitattn_kernel::AttnBwdTmaParams params) {
  using namespace jitattn_kernel;
  const AttnBwdParams& bp = params.p;
  const AttnFwdParams& p = bp.fwd;
  extern __shared__ __align__(1024) unsigned char smem_raw[];

  const CtaCoords cta = cta_coords(params);
  const int n_block = cta.n_block;
  const int hk = cta.hk;
  const int b = cta.b;
  const int tid = threadIdx.x;

  const Extents ex = extents(p, b);
  const int len_q = ex.len_q, len_k = ex.len_k;
  const int n0 = n_block * kBlockN;
  // Key rows this CTA writes: padded batches also zero their keys in [len_k, seqlen_k).
  const int rows_out = min(kBlockN, (kPadded ? p.seqlen_k : len_k) - n0);
  if (rows_out <= 0) return;
  const int tma_b = kPacked ? 0 : b;
  const int row_q0 = static_cast<int>(ex.row_q0);
  const int row_k0 = static_cast<int>(ex.row_k0);

  // Query rows that see any key of this block (masks skip the rest).
  const int offset = kBottomRight ? len_k - len_q : 0;
  const QueryRows rows_q = bwd_query_rows(bwd_mask(p, len_q, len_k), n_block, kBlockN);
  const int mb_begin = rows_q.begin / kBlockM;
  const int mb_count = rows_q.end > rows_q.begin ? (rows_q.end + kBlockM - 1) / kBlockM - mb_begin : 0;
  const int iterations = mb_count * p.group;

  // ---- shared memory: K, V, the Q / dO ring, two dS^T buffers, the consumers' dQ tiles,
  // LSE / delta, mbarriers ------------------------------------------------------------------------
  const u32 raw = smem_addr(smem_raw);
  const u32 base = (raw + 1023u) & ~1023u;
  const u32 sK = base;                               // (BLOCK_N, HEAD_DIM_PAD) panels
  const u32 sV = sK + kKBytes;                       // (BLOCK_N, HEAD_DIM_V_PAD) panels
  const u32 sQ = sV + kVBytes;                       // kStages x (BLOCK_M, HEAD_DIM_PAD)
  const u32 sdO = sQ + kStages * kQStageBytes;       // kStages x (BLOCK_M, HEAD_DIM_V_PAD)
  const u32 sdS = sdO + kStages * kOStageBytes;      // 2 x (BLOCK_N, BLOCK_M): dS^T
  const u32 sP = sdS + 2 * kDSBytes;                 // kWide: 2 x (BLOCK_N, BLOCK_M): P^T
  const u32 sDQ = sP + 2 * kPBytes;                  // kConsumers x kDqBytes: fp32 dQ panels
  const u32 sStats = sDQ + kConsumers * kDqBytes;    // kStages x BLOCK_M LSE, then as many delta
  float* lse_smem = reinterpret_cast<float*>(smem_raw + (sStats - raw));
  float* delta_smem = lse_smem + kStages * kBlockM;
  const u32 bar_kv = sStats + 8 * kStages * kBlockM;
  const u32 bar_full = bar_kv + 8;                   // kStages each
  const u32 bar_empty = bar_full + 8 * kStages;
  // kDqWriter: per consumer, an mbarrier for the dQ tile it hands its writer warp, and the
  // tile's query block and head.
  const u32 bar_dq_full = bar_empty + 8 * kStages;
  volatile int* dq_record = reinterpret_cast<volatile int*>(smem_raw + (bar_dq_full + 16 - raw));
  // kSplitQO: dO's full and empty mbarriers (kStages each); bar_full and bar_empty are then Q's
  // (and the LSE / delta rows').
  const u32 bar_full_o = bar_dq_full + (kDqWriter ? 32 : 0);
  const u32 bar_empty_o = bar_full_o + 8 * kStages;

  if (tid == 0) {
    mbar_init(bar_kv, 1);
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bar_full + 8 * s, 1 + 32);  // the TMA thread's expect_tx and warp 1's 32 lanes
      mbar_init(bar_empty + 8 * s, 128 * kConsumers);
      if constexpr (kSplitQO) {
        mbar_init(bar_full_o + 8 * s, 1);
        mbar_init(bar_empty_o + 8 * s, 128 * kConsumers);
      }
    }
    if constexpr (kDqWriter) {
      for (int w = 0; w < kConsumers; ++w) mbar_init(bar_dq_full + 8 * w, 128);
    }
    mbar_init_fence();
  }
  __syncthreads();

  const int warpgroup = tid / 128;
  if (warpgroup == 0) {
    // ---- producer ----------------------------------------------------------------------------
    setmaxnreg_dec<kProducerRegs>();
    const int warp = tid / 32;
    const int lane = tid % 32;
    if (iterations > 0 && tid == 0) {
      tma_prefetch_descriptor(&params.tma_q);
      tma_prefetch_descriptor(&params.tma_do);
      mbar_arrive_expect_tx(bar_kv, kKVTxBytes);
#pragma unroll
      for (int pnl = 0; pnl < kPanelsQK; ++pnl) {
        tma_load_4d(sK + pnl * kKPanelBytes, &params.tma_k, bar_kv, pnl * kPanelColsQK, row_k0 + n0, hk, tma_b);
      }
#pragma unroll
      for (int pnl = 0; pnl < kPanelsV; ++pnl) {
        tma_load_4d(sV + pnl * kVPanelBytes, &params.tma_v, bar_kv, pnl * kPanelColsV, row_k0 + n0, hk, tma_b);
      }
      int h = hk * p.group, mb = mb_begin;
      for (int it = 0; it < iterations; ++it) {
        const int s = it % kStages;
        if (it >= kStages) mbar_wait(bar_empty + 8 * s, (static_cast<u32>(it / kStages) & 1u) ^ 1u);
        const int m0 = mb * kBlockM;
        const int hq = h;
        if (++mb == mb_begin + mb_count) mb = mb_begin, ++h;  // next block, then the next head
        mbar_arrive_expect_tx(bar_full + 8 * s, kSplitQO ? kQTxBytes : kQTxBytes + kOTxBytes);
#pragma unroll
        for (int pnl = 0; pnl < kPanelsQK; ++pnl) {
          tma_load_4d(sQ + s * kQStageBytes + pnl * kQPanelBytes, &params.tma_q, bar_full + 8 * s,
                      pnl * kPanelColsQK, row_q0 + m0, hq, tma_b);
        }
        // kSplitQO: dO once its stage is free (after dV, which follows dK, Q's last reader).
        u32 bar_o = bar_full + 8 * s;
        if constexpr (kSplitQO) {
          if (it >= kStages) mbar_wait(bar_empty_o + 8 * s, (static_cast<u32>(it / kStages) & 1u) ^ 1u);
          bar_o = bar_full_o + 8 * s;
          mbar_arrive_expect_tx(bar_o, kOTxBytes);
        }
#pragma unroll
        for (int pnl = 0; pnl < kPanelsV; ++pnl) {
          tma_load_4d(sdO + s * kOStageBytes + pnl * kOPanelBytes, &params.tma_do, bar_o, pnl * kPanelColsV,
                      row_q0 + m0, hq, tma_b);
        }
      }
    } else if (iterations > 0 && warp == 1) {
      // Rows of this head's LSE / delta from the first block on; one head after another.
      const long long head0 = b * p.lse_batch_stride + ex.row_q0;
      const float* lse_h = p.lse + head0 + hk * p.group * p.lse_head_stride;
      const float* delta_h = bp.delta + head0 + hk * p.group * p.lse_head_stride;
      int mb = mb_begin;
      for (int it = 0; it < iterations; ++it) {
        const int s = it % kStages;
        if (it >= kStages) mbar_wait(bar_empty + 8 * s, (static_cast<u32>(it / kStages) & 1u) ^ 1u);
#pragma unroll
        for (int r0 = 0; r0 < kBlockM; r0 += 32) {
          const int row = mb * kBlockM + r0 + lane;
          const bool real = row < len_q;
          const float lse = real ? lse_h[row] : neg_inf();
          // kFoldScale: log2 of the softmax scale off the LSE, so that P^T comes out times the scale.
          lse_smem[s * kBlockM + r0 + lane] = lse == neg_inf() ? -neg_inf() : lse * kLog2e - kLog2Scale;
          delta_smem[s * kBlockM + r0 + lane] = real ? delta_h[row] : 0.0f;
        }
        mbar_arrive(bar_full + 8 * s);
        if (++mb == mb_begin + mb_count) {
          mb = mb_begin;
          lse_h += p.lse_head_stride;
          delta_h += p.lse_head_stride;
        }
      }
    } else if (kDqWriter && warp >= 2 && warp - 2 < kConsumers) {
      // dQ writer of consumer w = warp - 2: per tile the consumer hands over (mbarrier dq_full + 8 w), wait
      // for the query block's counter to reach this key block's turn, reduce-add the tile, wait
      // for the adds to be done, bump the counter, hand the tile back (barrier 11 + w). A record
      // with a negative block ends it. Without kDeterministic (kWide): no counter, and the tile goes
      // back once the adds have read it (all are waited for at the end).
      const int w = warp - 2;
      constexpr int kWriters = !kDqAllKeys || kDqSplitM || kDqSplitN ? kConsumers : 1;
      const int turn0 = kDqAllKeys ? 0 : w;  // _pp: consumer 0's share first, then 1's
      named_bar_arrive(11 + w, 128 + 32);  // the tile starts free
      for (u32 phase = 0;; phase ^= 1u) {
        mbar_wait(bar_dq_full + 8 * w, phase);
        const int m0w = dq_record[2 * w], hw = dq_record[2 * w + 1];
        if (m0w < 0) break;
        if (lane == 0) {
          // The CTA's extents and coordinates afresh per tile: this warp has 24 registers, and
          // held across the loop they spilled 8-20 bytes beside a window and packed varlen.
          const CtaCoords cw = cta_coords(params);
          const Extents ew = extents(p, cw.b);
          int* sem = nullptr;
          if constexpr (kDeterministic) {
            sem = bp.dq_sem + (static_cast<long long>(cw.b) * p.heads_q + hw) * bp.dq_sem_stride + m0w / kBlockM;
            sem_wait_at_least(sem, dq_rank(bwd_mask(p, ew.len_q, ew.len_k), cw.n_block, m0w / kBlockM, kBlockM, kBlockN) *
                                           kWriters +
                                       turn0);
          }
          dq_reduce_adds(params, sDQ + w * kDqBytes, w, m0w, hw, ew.len_q, static_cast<int>(ew.row_q0),
                         kPacked ? 0 : cw.b);
          // Deterministic: the adds done before the counter moves on; else the tile read.
          bulk_wait_all<!kDeterministic>();
          if constexpr (kDeterministic) sem_release_one(sem);
        }
        __syncwarp();
        named_bar_arrive(11 + w, 128 + 32);
      }
      if (!kDeterministic && lane == 0) bulk_wait_all<false>();  // every add done before the CTA's memory goes
    }
  } else {
    // ---- consumers: 64 keys per warpgroup ------------------------------------------------------
    setmaxnreg_inc<kConsumerRegs>();
    const int wg = warpgroup - 1;
    const int warp = (tid % 128) / 32;
    const int lane = tid % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int krow0 = kWide ? 0 : wg * 64;  // first key row of this warpgroup in the CTA's block
    const int kw0 = n0 + krow0;            // first key of this warpgroup
    const int key_g = kw0 + warp * 16 + g;  // key of accumulator rows g (and g + 8)
    const int qc0 = kWide ? wg * kSCols : 0;  // first query column of this warpgroup's S^T
    const int dq_key0 = kDqAllKeys ? 0 : wg * 64;
    const int dq_col0 = kDqSplitN ? wg * kDqN : 0;

    float acc_dk[kDKRegs];  // (64 keys, DK_COLS) per warpgroup
    float acc_dv[kDVRegs];  // (64 keys, DV_COLS) per warpgroup
#pragma unroll
    for (int i = 0; i < kDKRegs; ++i) acc_dk[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < kDVRegs; ++i) acc_dv[i] = 0.0f;

    if (iterations > 0) mbar_wait(bar_kv, 0);
    // kTurns (_pp): the two consumers take turns issuing their wgmma batches (S^T and dP^T; then dV,
    // dK and dQ), so one's exponentials and dS^T run under the other's tensor-core work: consumer
    // w waits on barrier 3 + w before a batch and arrives on the other's after it. Consumer 1
    // gives consumer 0 the first turn and skips its last hand-over, so the counts match.
    auto my_turn = [&] {
      if constexpr (kTurns) named_bar_sync(3 + wg, 256);
    };
    auto pass_turn = [&](bool last) {
      if constexpr (kTurns) {
        if (wg == 0 || !last) named_bar_arrive(4 - wg, 256);
      }
    };
    if constexpr (kTurns) {
      if (wg == 1 && iterations > 0) named_bar_arrive(3, 256);
    }
    // dV += P^T dO (A: P^T's fragments pa_, B: the dO stage at tO_).
    auto issue_dv = [&](u32 tO_, u32 (&pa_)[kSCols / 16][4]) {
#pragma unroll
      for (int kk = 0; kk < kSCols / 16; ++kk) {
        wgmma_dv(acc_dv, pa_[kk], desc_mnmajor<kSwizzleV>(tO_, kOPanelBytes, kk * 16, 0));
      }
      wgmma_commit();
    };
    // kWide: dK += dS^T Q, then dV += P^T dO, for this warpgroup's head-dim columns, every operand
    // from shared memory (P^T at tS_ + 2 kDSBytes); a commit group each, so that Q's stage is
    // released before dO's.
    auto issue_dk_dv_smem = [&](u32 tS_, u32 tQ_, u32 tO_) {
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        wgmma_dk(acc_dk, desc_kmajor<128>(tS_, kDSPanelBytes, 0, kk),
                 desc_mnmajor<kSwizzleQK>(tQ_, kQPanelBytes, kk * 16, wg * kDkCols));
      }
      wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < kBlockM / 16; ++kk) {
        wgmma_dv(acc_dv, desc_kmajor<128>(tS_ + 2 * kDSBytes, kDSPanelBytes, 0, kk),
                 desc_mnmajor<kSwizzleV>(tO_, kOPanelBytes, kk * 16, wg * kDvCols));
      }
      wgmma_commit();
    };
    // kSplitQO: dK, then dV done (they complete in order): Q's stage s_, then dO's, is free.
    auto release_q = [&](int s_) {
      fence_regs(acc_dk);
      mbar_arrive(bar_empty + 8 * s_);
    };
    auto release_o = [&](int s_) {
      fence_regs(acc_dv);
      mbar_arrive(bar_empty_o + 8 * s_);
    };
    // dQ += dS K for the block whose dS^T is in tS_ (query rows m0_, head h_): the product, its
    // fp32 tile in shared memory, the warpgroup's reduce-adds. dv_late_: dV (tO_, pa_) is issued
    // behind the product, and only the product is waited on before the stores. last: the
    // consumer's last block (ping-pong's hand-over). kWide: dK and dV (issue_dk_dv_smem) behind it,
    // and stage s_ released as they complete.
    auto dq_product = [&](u32 tS_, int m0_, int h_, bool dv_late_, bool last, u32 tO_, u32 (&pa_)[kSCols / 16][4],
                          u32 tQ_, int s_) {
      float acc_dq[kDqMTiles][kDqPassN / 2];  // (64 queries, DQ_N / DQ_PASSES) per tile
      // The product of pass ps (its kDqPassN columns) into acc_dq, one commit group.
      auto issue_dq = [&](int ps) {
#pragma unroll
        for (int i = 0; i < kDqMTiles; ++i) fence_regs(acc_dq[i]);
        wgmma_fence();
#pragma unroll
        for (int i = 0; i < kDqMTiles; ++i) {
          const int mt = kDqSplitM ? wg : i;
#pragma unroll
          for (int kk = 0; kk < kDqKeys / 16; ++kk) {
            wgmma_dq(acc_dq[i], desc_mnmajor<128>(tS_, kDSPanelBytes, dq_key0 + kk * 16, mt * 64),
                     desc_mnmajor<kSwizzleQK>(sK, kKPanelBytes, dq_key0 + kk * 16, dq_col0 + ps * kDqPassN),
                     kk > 0 ? 1 : 0);
          }
        }
        wgmma_commit();
      };
      issue_dq(0);
      if constexpr (kWide) {
        issue_dk_dv_smem(tS_, tQ_, tO_);
      } else if (dv_late_) {
        issue_dv(tO_, pa_);
      }
      pass_turn(last);
      if constexpr (kWide) {
        wgmma_wait<2>();  // dQ is done; dK and dV may still run
      } else if (dv_late_) {
        wgmma_wait<1>();  // dQ is done; dV may still run
      } else {
        wgmma_wait<0>();
      }
#pragma unroll
      for (int i = 0; i < kDqMTiles; ++i) fence_regs(acc_dq[i]);
      if constexpr (kDqWriter) named_bar_sync(11 + wg, 128 + 32);  // the writer warp is done with the tile
      // This warpgroup's dQ tiles, and this thread's place in them: row warp * 16 + g of the
      // first panel, chunk (t / 2) ^ g, the pair's 8 bytes in it. Formed here from a thread index
      // the compiler cannot keep from the start (no register held across the block loop).
      const int tidf = tid_fresh();
      const u32 sDQw = sDQ + (tidf / 128 - 1) * kDqBytes;
      const int lg = (tidf % 32) / 4, lt = tidf % 4;
      const u32 dq_lane = sDQw + ((tidf % 128) / 32 * 16 + lg) * 128 + (((lt / 2) ^ lg) << 4) + (lt % 2) * 8;
      // The product into the dQ tile, 128-byte swizzled fp32 panels (16-byte chunk ^ row % 8):
      // accumulator pair (row warp * 16 + g + 8 hf, columns 8 nt + 2t, + 1) goes to chunk
      // (2 (nt % 4) + t / 2) ^ g of its row, i.e. to dq_lane ^ (2 (nt % 4) << 4) plus constant
      // offsets: one address register for every store. Per store, a warp's 8 rows take 16
      // distinct (row, chunk) pairs: conflict-free. Pass ps's columns start at panel ps * kDqPassN / 32.
      auto store_dq = [&](int ps) {
#pragma unroll
        for (int i = 0; i < kDqMTiles; ++i) {
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
#pragma unroll
            for (int nt = 0; nt < kDqPassN / 8; ++nt) {
              st_shared_v2((dq_lane ^ ((2 * (nt % 4)) << 4)) + (i * kDqPanels + ps * kDqPassN / 32 + nt / 4) * kDqPanelBytes +
                               hf * 8 * 128,
                           acc_dq[i][4 * nt + 2 * hf], acc_dq[i][4 * nt + 2 * hf + 1]);
            }
          }
        }
      };
      store_dq(0);
      // kWide: the stage's Q and dO are released as dK and dV complete; at 128 dQ columns the other
      // pass's columns are issued behind them once the first is stored (all 64 registers beside
      // dK's and dV's 128 spilled 92 bytes at d256), and stored last.
      if constexpr (kWide) {
        if constexpr (kDqPasses == 2) issue_dq(1);
        wgmma_wait<kDqPasses>();
        release_q(s_);
        wgmma_wait<kDqPasses - 1>();
        release_o(s_);
        if constexpr (kDqPasses == 2) {
          wgmma_wait<0>();
#pragma unroll
          for (int i = 0; i < kDqMTiles; ++i) fence_regs(acc_dq[i]);
          store_dq(1);
        }
      }
      fence_proxy_async();  // the stores, before the reduce (async proxy) reads them
      if constexpr (kDqWriter) {
        // The tile to this warpgroup's writer warp, with its query block and head.
        if (tidf % 128 == 0) {
          dq_record[2 * wg] = m0_;
          dq_record[2 * wg + 1] = h_;
        }
        mbar_arrive(bar_dq_full + 8 * wg);
        return;
      }
      // Warp 0 waits for the warpgroup's stores, the other warps go on.
      if (warp == 0) {
        named_bar_sync(5 + wg, 128);
      } else {
        named_bar_arrive(5 + wg, 128);
      }
      if (tidf % 128 == 0) dq_reduce_adds(params, sDQw, wg, m0_, h_, len_q, row_q0, tma_b);
    };
    int dq_m0 = 0, dq_h = 0;  // kDqAlternate: the previous block's rows and head (its dQ is lagged)
    int h = hk * p.group, mb = mb_begin;  // query head and block of iteration it
    for (int it = 0; it < iterations; ++it, (++mb == mb_begin + mb_count) ? (mb = mb_begin, ++h) : 0) {
      const int s = it % kStages;
      const int m0 = mb * kBlockM;
      const u32 tQ = sQ + s * kQStageBytes;
      const u32 tO = sdO + s * kOStageBytes;
      const u32 tS = sdS + (it & 1) * kDSBytes;
      // kDropout: the keep bits of this thread's elements, bit 4 (nt % 8) + e of word nt / 8, drawn
      // while the block's Q and dO arrive (before S^T's and dP^T's accumulators are live: drawn
      // beside them, the Philox state spilled 8-92 bytes at d64-112). A Philox call gives 4
      // adjacent keys of one query; here 4 adjacent keys are the g of 4 lanes (g = 4j..4j+3, same
      // t), which between them hold 2 queries x 2 key quads per n8 group: each computes one of
      // those 4 calls (the one of its element e = g % 4) and the 4 trade their 4-bit results by
      // shuffles, so no word is drawn twice.
      u32 keep_bits[(kMT + 7) / 8];
      if constexpr (kDropout) {
        const unsigned bh = static_cast<unsigned>(b * p.heads_q + h);
        const int k = g % 4;
        const unsigned qk = static_cast<unsigned>(m0 + qc0 + 2 * t + (k % 2));
        const unsigned kk = static_cast<unsigned>(key_g + (k / 2) * 8);
#pragma unroll
        for (int w = 0; w < (kMT + 7) / 8; ++w) {
          u32 mine = 0;
#pragma unroll
          for (int j = 0; j < 8 && 8 * w + j < kMT; ++j) {
            // One call at a time: each call's query passes through asm beside the bits so far, so the
            // calls do not overlap (their states side by side spilled 4-12 bytes at d96-112; a loop
            // that is not unrolled spilled 70-120 around the wgmma accumulators).
            unsigned q = qk + (8 * w + j) * 8;
            asm volatile("" : "+r"(q) : "r"(mine));
            mine |= dropout_keep4(p.dropout_seed, p.dropout_offset, bh, q, kk, p.dropout_threshold) << (4 * j);
          }
          u32 bits = 0;
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const u32 other = __shfl_sync(0xffffffffu, mine, lane + (e - k) * 4);
            bits |= ((other >> k) & 0x11111111u) << e;
          }
          keep_bits[w] = bits;
        }
      }
      mbar_wait(bar_full + 8 * s, static_cast<u32>(it / kStages) & 1u);

      // ---- S^T = K Q^T, dP^T = V dO^T (two commit groups: P^T is computed while dP^T runs) -----
      float acc_s[kSRegs];   // (64 keys, S_COLS queries)
      float acc_dp[kSRegs];  // (64 keys, S_COLS queries)
      fence_regs(acc_s);
      fence_regs(acc_dp);
      my_turn();
      wgmma_fence();
#pragma unroll
      for (int ks = 0; ks < kHeadDimPad / 16; ++ks) {
        wgmma_s(acc_s, desc_kmajor<kSwizzleQK>(sK, kKPanelBytes, krow0, ks),
                desc_kmajor<kSwizzleQK>(tQ, kQPanelBytes, qc0, ks), ks > 0 ? 1 : 0);
      }
      wgmma_commit();
      if constexpr (kSplitQO) mbar_wait(bar_full_o + 8 * s, static_cast<u32>(it / kStages) & 1u);
#pragma unroll
      for (int ks = 0; ks < kHeadDimVPad / 16; ++ks) {
        wgmma_s(acc_dp, desc_kmajor<kSwizzleV>(sV, kVPanelBytes, krow0, ks),
                desc_kmajor<kSwizzleV>(tO, kOPanelBytes, qc0, ks), ks > 0 ? 1 : 0);
      }
      wgmma_commit();
      pass_turn(false);
      const float* lse_s = lse_smem + s * kBlockM + qc0;
      const float* delta_s = delta_smem + s * kBlockM + qc0;
      // kLseAhead: this block's LSE (columns c, c + 1 of n8 group nt) read while the products run.
      float2 lse_r[kMT];
      if constexpr (kLseAhead) {
#pragma unroll
        for (int nt = 0; nt < kMT; ++nt) lse_r[nt] = *reinterpret_cast<const float2*>(lse_s + nt * 8 + 2 * t);
      }
      // Softcap's d(score)/d(Q.K) needs the raw score beside dP^T: wait for both first.
      if constexpr (kSoftcap) {
        wgmma_wait<0>();
        fence_regs(acc_dp);
      } else {
        wgmma_wait<1>();  // S^T is done; dP^T may still run
      }
      fence_regs(acc_s);

      // Per-element indices derive from values the compiler cannot know before the wait, so it
      // does not hoist (and keep live) a tile's worth of them across the wgmma.
      int m0f = m0 + qc0, keyf = key_g;  // this warpgroup's first query column
      asm volatile("" : "+r"(m0f), "+r"(keyf));
      auto kept = [&](int nt, int e) { return ((keep_bits[nt / 8] >> (4 * (nt % 8) + e)) & 1u) != 0u; };
      ScoreMod mod;
      mod.init(p, b, h, len_q, len_k, offset, m0f);
      bool need_mask = kw0 + 64 > len_k;
      if (kCausal) need_mask |= kw0 + 63 > m0f + offset;
      if (kWindow && p.window_right >= 0) need_mask |= kw0 + 63 > m0f + offset + p.window_right;
      if (kWindow && p.window_left >= 0) need_mask |= kw0 < m0f + kSCols - 1 + offset - p.window_left;
      // dBias: dS^T's entries at (query m0 + c, key) of this head's plane of the fp32 workspace,
      // strides 0 on broadcast dims. One red per score: adjacent keys are neighbouring lanes (g),
      // so a warp's red covers 4 query rows x 8 keys, whole 32-byte sectors (a v2 would need a
      // shuffle and an even row stride). Only positions inside the sequence: rows past len_q and
      // keys past len_k are no scores of it (the workspace keeps its zeros there). Offsets from
      // the row pointer are 32-bit (under block_m rows of a stride <= seqlen_k); the strides pass
      // through asm so their per-element products are formed at the red, not hoisted (a tile's
      // worth of registers).
      float* dba_row = nullptr;  // (query m0 + 2t, key key_g)
      int dba_rs = 0, dba_key8 = 0, dba_rows = 0, dba_keys = 0;
      if constexpr (kDbias) {
        dba_rs = static_cast<int>(bp.dba_row_stride);
        dba_key8 = 8 * static_cast<int>(bp.dba_col_stride);  // 8 keys on: 8, or 0 broadcast
        asm volatile("" : "+r"(dba_rs), "+r"(dba_key8));
        dba_row = bp.dbias_accum + b * bp.dba_batch_stride + h * bp.dba_head_stride +
                  static_cast<long long>(m0f + 2 * t) * dba_rs + keyf * (dba_key8 / 8);
        dba_rows = len_q - (m0f + 2 * t);  // rows nt * 8 + e % 2 below this are in the sequence
        dba_keys = len_k - keyf;           // key offsets (e / 2) * 8 below this
      }
      auto add_dbias = [&](int nt, int e, float ds) {
        if constexpr (kDbias) {
          const int r = nt * 8 + e % 2;
          if (r < dba_rows && (e / 2) * 8 < dba_keys) red_add(dba_row + r * dba_rs + (e / 2) * dba_key8, ds);
        }
      };
      // ---- P^T in place (masks, score modifiers); with softcap, dS^T too ------------------------
      // kMaskSplit: one copy of the loop per kind of block, so blocks inside the mask evaluate none
      // of it (in one loop, `need_mask && is_masked` put a branch around each element's test, and
      // the branches kept the exponentials from overlapping: H200, d64 causal, a block's P^T took
      // about 1000 clocks more than without a mask).
      auto p_tile = [&](const bool masked) {
#pragma unroll
        for (int nt = 0; nt < kMT; ++nt) {
          const int c = nt * 8 + 2 * t;  // query column within the block
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int kj = keyf + (e / 2) * 8;
            const int qi = m0f + c + (e % 2);
            const float raw_s = acc_s[4 * nt + e];
            const float lse = kLseAhead ? (e % 2 ? lse_r[nt].y : lse_r[nt].x) : lse_s[c + (e % 2)];
            const float x = kRawScores ? fmaf(raw_s, kExpScale, -lse) : mod.apply(raw_s, qi, kj) - lse;
            float pr = fast_exp2(x);
            if (masked && is_masked(p, qi, kj, len_q, len_k, offset)) pr = 0.0f;
            acc_s[4 * nt + e] = pr;
            if constexpr (kSoftcap) {
              float dp = acc_dp[4 * nt + e];
              if constexpr (kDropout) {  // dL/dP through the kept (and scaled) probabilities; P^T Z for dV
                const bool keep = kept(nt, e);
                dp = keep ? dp * p.dropout_scale : 0.0f;
                acc_s[4 * nt + e] = keep ? pr * p.dropout_scale : 0.0f;
              }
              const float ds = pr * (dp - delta_s[c + (e % 2)]);  // dL/d(score)
              add_dbias(nt, e, ds);
              acc_dp[4 * nt + e] = ds * mod.grad_scale(raw_s);
            }
          }
        }
      };
      if constexpr (kMaskSplit) {
        if (need_mask) {
          p_tile(true);
        } else {
          p_tile(false);
        }
      } else {
        p_tile(need_mask);
      }
      if constexpr (!kSoftcap) {
        // ---- dS^T = P^T (dP^T - delta) * scale ---------------------------------------------------
        wgmma_wait<0>();
        fence_regs(acc_dp);
        float2 delta_r[kMT];
#pragma unroll
        for (int nt = 0; nt < kMT; ++nt) delta_r[nt] = *reinterpret_cast<const float2*>(delta_s + nt * 8 + 2 * t);
#pragma unroll
        for (int nt = 0; nt < kMT; ++nt) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float delta = e % 2 ? delta_r[nt].y : delta_r[nt].x;
            float dp = acc_dp[4 * nt + e];
            const float pr = acc_s[4 * nt + e];
            if constexpr (kDropout) {  // dL/dP through the kept (and scaled) probabilities; P^T Z for dV
              const bool keep = kept(nt, e);
              dp = keep ? dp * p.dropout_scale : 0.0f;
              acc_s[4 * nt + e] = keep ? pr * p.dropout_scale : 0.0f;
            }
            const float ds = pr * (dp - delta);  // dL/d(score)
            add_dbias(nt, e, ds);
            acc_dp[4 * nt + e] = kFoldScale ? ds : ds * mod.grad_scale(0.0f);  // kFoldScale: pr has it
          }
        }
      }
      // P^T and dS^T as wgmma A fragments: the accumulator layout is the A-fragment layout.
      u32 pa[kSCols / 16][4];
      u32 da[kSCols / 16][4];
#pragma unroll
      for (int kk = 0; kk < kSCols / 16; ++kk) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          pa[kk][i] = pack2(acc_s[8 * kk + 2 * i], acc_s[8 * kk + 2 * i + 1]);
          da[kk][i] = pack2(acc_dp[8 * kk + 2 * i], acc_dp[8 * kk + 2 * i + 1]);
        }
      }
      // kDqAlternate: buffer it % 2 held block it - 2's dS^T; if that dQ was the other consumer's,
      // wait until its product has read it.
      if constexpr (kDqAlternate) {
        if (it >= 2 && (it & 1) != wg) named_bar_sync(7 + (it & 1), 256);
      }
      // dS^T into shared memory, 128-byte swizzle (16-byte chunk index ^ row % 8): fragment i
      // holds row g + 8 (i % 2), columns 16 kk + 8 (i / 2) + 2t, 2t + 1 (kWide: P^T too, in the
      // same layout, each consumer its query columns).
#pragma unroll
      for (int kk = 0; kk < kSCols / 16; ++kk) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = krow0 + warp * 16 + g + 8 * (i % 2);
          const int col = qc0 + kk * 16 + 8 * (i / 2) + 2 * t;
          const u32 at = (col / 64) * kDSPanelBytes + row * 128 + ((((col % 64) / 8) ^ (row % 8)) << 4) + (col % 8) * 2;
          st_shared_u32(tS + at, da[kk][i]);
          if constexpr (kWide) st_shared_u32(tS + 2 * kDSBytes + at, pa[kk][i]);
        }
      }

      // ---- dK += dS^T Q, dV += P^T dO, dQ += dS K ------------------------------------------------
      // dK (and dV, unless it goes after dQ) are issued before the dS^T barrier, so the tensor
      // cores run them while this consumer waits for the other's dS^T. kDqEarly (where the
      // register model has room for P^T beside the dQ accumulators): this block's dQ consumer
      // waits for dK after the barrier, issues dQ, then dV, and writes the dQ product out while
      // dV runs. (dV late rather than dK: the other way round spilled 8 bytes at d128.)
      // kWide: dK and dV go after dQ, from shared memory; the fragments die here.
      const bool dv_late = kDqEarly || kWide;  // kDqEarly never beside kDqAlternate (the generator's choice)
      fence_regs(acc_dv);
      fence_regs(acc_dk);
      if constexpr (!kWide) {
#pragma unroll
        for (int kk = 0; kk < kSCols / 16; ++kk) {
          fence_regs(pa[kk]);
          fence_regs(da[kk]);
        }
      }
      // dK and dV done: their A fragments may die (dS^T's already did under dv_late, once dK was
      // waited on at the barrier), and stage s is free. (kWide releases its stage in dq_product.)
      auto finish_dk_dv = [&] {
        wgmma_wait<0>();
        fence_regs(acc_dv);
        fence_regs(acc_dk);
#pragma unroll
        for (int kk = 0; kk < kSCols / 16; ++kk) {
          fence_regs(pa[kk]);
          if (!dv_late) fence_regs(da[kk]);
        }
        mbar_arrive(bar_empty + 8 * s);
      };
      if constexpr (!kWide) {
        my_turn();
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < kSCols / 16; ++kk) {
          wgmma_dk(acc_dk, da[kk], desc_mnmajor<kSwizzleQK>(tQ, kQPanelBytes, kk * 16, 0));
        }
        wgmma_commit();
        if (!dv_late) issue_dv(tO, pa);
      }
      fence_proxy_async();  // the dS^T stores (generic proxy), before dQ's wgmma (async proxy) reads them

      // ---- the dS^T barrier ------------------------------------------------------------------------
      // The issuing thread's (the warpgroup's first) reduce-adds of earlier blocks have read this
      // warpgroup's dQ tile before it arrives; past the barrier every thread may overwrite it.
      if (!kDqWriter && tid_fresh() % 128 == 0) bulk_wait_all<true>();
      if constexpr (kDqAlternate) {
        // Block it's dQ is consumer it % 2's, one block later: the other arrives with its half of
        // dS^T (barriers 1 and 2 by the block's parity: its next arrival there, two blocks on,
        // follows its wait for that dQ to have read the buffer).
        if ((it & 1) != wg) named_bar_arrive(1 + (it & 1), 256);
      } else if constexpr (kDqAllKeys) {
        named_bar_sync(1, 128 * kConsumers);  // every consumer's dS^T rows are written
      } else {
        named_bar_sync(1 + wg, 128);
      }
      // Without kDqEarly, dK and dV first: their A fragments die before the dQ accumulators live.
      // With it, dK (issued before the barrier, done by now or nearly): dS^T's fragments die.
      if constexpr (kWide) {
        // Nothing in flight: S^T and dP^T were waited on, dK and dV go behind dQ.
      } else if (!dv_late) {
        finish_dk_dv();
      } else {
        wgmma_wait<0>();
        fence_regs(acc_dk);
#pragma unroll
        for (int kk = 0; kk < kSCols / 16; ++kk) fence_regs(da[kk]);
      }
      if constexpr (kDqAlternate) {
        // dQ of the previous block (lagged one block), by its consumer: the other wrote its half
        // of that dS^T a whole block ago, so the barrier rarely waits. Once the product has read
        // the buffer, the other may write the block after next's dS^T into it (barrier 7 + parity).
        if (it >= 1 && ((it - 1) & 1) == wg) {
          named_bar_sync(1 + ((it - 1) & 1), 256);
          dq_product(sdS + ((it - 1) & 1) * kDSBytes, dq_m0, dq_h, false, false, tO, pa, tQ, s);
          if (it + 1 < iterations) named_bar_arrive(7 + ((it - 1) & 1), 256);
        }
        dq_m0 = m0;
        dq_h = h;
        continue;
      }
      dq_product(tS, m0, h, dv_late, it == iterations - 1, tO, pa, tQ, s);
      if (dv_late && !kWide) finish_dk_dv();
    }
    if constexpr (kDqAlternate) {  // the last block's lagged dQ
      if (iterations > 0 && ((iterations - 1) & 1) == wg) {
        named_bar_sync(1 + ((iterations - 1) & 1), 256);
        u32 no_pa[kSCols / 16][4];  // no dV here
        dq_product(sdS + ((iterations - 1) & 1) * kDSBytes, dq_m0, dq_h, false, false, sdO, no_pa, sQ, 0);
      }
    }
    if constexpr (kDqWriter) {
      // The last tile's reduce-adds have read it once the writer hands it back; then the end record.
      named_bar_sync(11 + wg, 128 + 32);
      if (tid_fresh() % 128 == 0) dq_record[2 * wg] = -1;
      mbar_arrive(bar_dq_full + 8 * wg);
    } else if (tid_fresh() % 128 == 0) {
      bulk_wait_all<false>();  // every reduce done before the CTA's memory goes
    }

    // ---- epilogue: dK (scaled through grad_scale) and dV (kFoldScale: P^T was the scale's multiple) ---
    const CtaCoords ce = cta_coords(params);  // recomputed, not held across the loop
    const int ce_n0 = ce.n_block * kBlockN;
    elem_t* gdK = static_cast<elem_t*>(bp.dk) + (kPacked ? 0 : ce.b * bp.dk_batch_stride) +
                  (ex.row_k0 + ce_n0) * bp.dk_row_stride + ce.hk * bp.dk_head_stride;
    elem_t* gdV = static_cast<elem_t*>(bp.dv) + (kPacked ? 0 : ce.b * bp.dv_batch_stride) +
                  (ex.row_k0 + ce_n0) * bp.dv_row_stride + ce.hk * bp.dv_head_stride;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int r = krow0 + warp * 16 + g + 8 * hf;
      if (r < rows_out) {
        // kWide: this warpgroup's columns from wg * DK_COLS (dK) and wg * DV_COLS (dV).
        const int ck = kWide ? wg * kDkCols : 0, cv = kWide ? wg * kDvCols : 0;
#pragma unroll
        for (int d = 0; d < kDkCols / 8; ++d) {
          if (kHeadDimPad == kHeadDim || ck + d * 8 < kHeadDim) {
            *reinterpret_cast<u32*>(gdK + r * bp.dk_row_stride + ck + d * 8 + 2 * t) =
                pack2(acc_dk[4 * d + 2 * hf], acc_dk[4 * d + 2 * hf + 1]);
          }
        }
#pragma unroll
        for (int d = 0; d < kDvCols / 8; ++d) {
          if (kHeadDimVPad == kHeadDimV || cv + d * 8 < kHeadDimV) {
            *reinterpret_cast<u32*>(gdV + r * bp.dv_row_stride + cv + d * 8 + 2 * t) =
                kFoldScale ? pack2(acc_dv[4 * d + 2 * hf] * kInvScale, acc_dv[4 * d + 2 * hf + 1] * kInvScale)
                           : pack2(acc_dv[4 * d + 2 * hf], acc_dv[4 * d + 2 * hf + 1]);
          }
        }
      }
    }
  }
}
